"""Trust on first use for downloaded checkpoints: ``<cache>/models/registry.lock.json``.

The released PSM / GeoCLAP checkpoints carry no published SHA-256, and their Drive file ids are
not published either (only the folder is). So the first successful pull records, per model, what
it resolved to (the Drive file id, HF commit or URL), the file's size and its SHA-256; every later
pull (on this machine, or on another one that shares the lock file) and ``soundmap models verify``
check against that record. A registry entry that carries a sha256 is authoritative and wins over
the lock (the caller then uses :func:`record` to overwrite a stale record).

Layout: ``{"version": 1, "models": {NAME: {"source_id", "size", "sha256", "recorded_at", ...}}}``.
Written atomically, so a crash never leaves half a lock file.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from soundmap.atomic import write_text_atomic
from soundmap.errors import ConfigError, ModelError

LOCK_FILE = "registry.lock.json"
LOCK_VERSION = 1


def lock_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache>/models/registry.lock.json``."""
    from soundmap.paths import model_dir

    return model_dir(cache_dir) / LOCK_FILE


def read_lock(cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The whole lock (``{"version": 1, "models": {...}}``); an empty one when there is no file."""
    path = lock_path(cache_dir)
    if not path.is_file():
        return {"version": LOCK_VERSION, "models": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path} is unreadable ({type(err).__name__}); delete it to trust the next "
                          "download again") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise ConfigError(f"{path} is not a soundmap lock file; delete it to trust the next download again")
    return data


def locked(name: str, cache_dir: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The record of ``name``, or None when it was never pulled."""
    record = read_lock(cache_dir)["models"].get(name)
    return dict(record) if isinstance(record, dict) else None


def record(name: str, *, source_id: str, size: int, sha256: str, cache_dir: str | os.PathLike | None = None,
           extra: dict[str, Any] | None = None) -> None:
    """Write (or overwrite) the record of ``name``."""
    data = read_lock(cache_dir)
    data["models"][name] = {"source_id": source_id, "size": int(size), "sha256": sha256.lower(),
                            "recorded_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                            **(extra or {})}
    write_text_atomic(lock_path(cache_dir), json.dumps(data, indent=2, sort_keys=True) + "\n")


def mismatch(name: str, existing: dict[str, Any], *, size: int, sha256: str,
             cache_dir: str | os.PathLike | None = None) -> str | None:
    """Why a file of ``size`` / ``sha256`` is not the one recorded for ``name`` (None when it is)."""
    where = lock_path(cache_dir)
    if existing.get("sha256", "").lower() != sha256.lower():
        return (f"sha256 of {name} is {sha256[:12]}…, not {str(existing.get('sha256'))[:12]}… as recorded on first "
                f"download in {where}; the file on the server changed (delete that entry to trust the new one)")
    if int(existing.get("size", -1)) != int(size):
        return (f"{name} is {size} bytes, not {existing.get('size')} as recorded on first download in {where}; "
                "delete that entry to trust the new one")
    return None


def record_or_verify(name: str, *, source_id: str, size: int, sha256: str,
                     cache_dir: str | os.PathLike | None = None, extra: dict[str, Any] | None = None) -> None:
    """Record ``name`` on first use; afterwards a one-line ModelError unless size and sha256 match.

    A changed ``source_id`` with the same bytes (the authors re-uploaded the same file) is accepted:
    what is trusted is the content, not where it was found.
    """
    existing = locked(name, cache_dir)
    if existing is None:
        record(name, source_id=source_id, size=size, sha256=sha256, cache_dir=cache_dir, extra=extra)
        return
    problem = mismatch(name, existing, size=size, sha256=sha256, cache_dir=cache_dir)
    if problem:
        raise ModelError(problem)
