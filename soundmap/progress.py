"""The one progress-bar helper, so that every long loop honours ``--quiet`` the same way."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_quiet = bool(os.environ.get("SOUNDMAP_QUIET"))


def set_quiet(quiet: bool) -> None:
    """Silence (or re-enable) every progress bar and informational message of this process."""
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    """True when ``--quiet`` (or ``SOUNDMAP_QUIET``) asked for silence."""
    return _quiet


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", **kwargs: Any) -> "tqdm[T]":
    """A tqdm bar (on stderr) that is disabled under ``--quiet``."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=_quiet, dynamic_ncols=True,
                leave=False, **kwargs)


def info(message: str) -> None:
    """Print an informational line on stderr unless quiet (stdout stays for data)."""
    if not _quiet:
        import sys
        print(message, file=sys.stderr)


def iterate(iterable: Iterable[T], **kwargs: Any) -> Iterator[T]:
    """Iterate with a progress bar."""
    yield from progress(iterable, **kwargs)
