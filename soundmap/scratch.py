"""Scratch files beside an output: named after the process that owns them, so that what a killed
run (SIGKILL, power loss) left behind can be told apart from a run still working, and swept.

A query writes its scratch rasters into ``.soundmap-query-<pid>-XXXX/`` and its outputs first as
``.<name>.<pid>.XXXX.tmp.tif`` beside ``--out``. A SIGTERM is turned into an exception (see
:func:`terminate_as_exception`), so the usual clean-up runs; a SIGKILL cannot be caught, so the
next run in the same directory deletes every such entry whose process no longer exists.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from .errors import SoundmapError

QUERY_SCRATCH_PREFIX = ".soundmap-query-"
_OWNED = re.compile(r"^(?:\.soundmap-query-(\d+)-.*|\..+\.(\d+)\.[^.]+\.tmp(?:\.[A-Za-z0-9]+)?)$")


def scratch_prefix(kind: str = QUERY_SCRATCH_PREFIX) -> str:
    """The prefix of this process's scratch directories."""
    return f"{kind}{os.getpid()}-"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def sweep_stale(directory: str | os.PathLike) -> list[Path]:
    """Delete the scratch directories and temporary outputs in ``directory`` whose owning process
    is gone; returns what was deleted."""
    swept: list[Path] = []
    root = Path(directory)
    if not root.is_dir():
        return swept
    for entry in root.iterdir():
        match = _OWNED.match(entry.name)
        if not match:
            continue
        pid = int(match.group(1) or match.group(2))
        if pid == os.getpid() or pid_alive(pid):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        swept.append(entry)
    return swept


class Terminated(SoundmapError):
    """The process received SIGTERM; raised so that clean-up (``finally``, ``with``) runs."""

    exit_code = 143


@contextlib.contextmanager
def terminate_as_exception(message: str) -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` with ``message`` in the main thread
    (Python's default is to die at once, leaving scratch files behind)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Terminated(message)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
