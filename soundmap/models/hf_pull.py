"""Pull a registry entry whose ``source.kind`` is ``hf`` (the Sat2Sound checkpoints on
``MVRL/sat2sound``): one file through :mod:`soundmap.hub` into the Hugging Face cache, then the
ordinary import.

Kept apart on purpose: the models-out-of-the-box work adds a general ``source:`` dispatch and a
lock file; this function is the ``hf`` branch of that dispatch and :func:`record_or_verify` is
the lock-file check it needs (same signature), so the two can be folded together.

Integrity: at the first pull the resolved commit, the file size and its SHA-256 are written to
``<cache>/models.lock.json``; every later pull of the same name must produce the same SHA-256,
otherwise the file changed upstream (or in the cache) and it is refused. A file already in the
HF cache is used without any request (``hub_file`` prefers the cache), and offline mode
(``HF_HUB_OFFLINE`` / ``SOUNDMAP_OFFLINE``) makes none at all.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from soundmap.errors import ModelError

LOCK_FILE = "models.lock.json"


def _lock_path(cache_dir: str | os.PathLike | None) -> Path:
    from soundmap.paths import cache_dir as cache_root

    return cache_root(cache_dir) / LOCK_FILE


def record_or_verify(name: str, *, source_id: str, size: int, sha256: str, cache_dir: str | os.PathLike | None = None,
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Record what ``name`` was pulled as, or check a later pull against the record."""
    from soundmap.atomic import write_text_atomic

    path = _lock_path(cache_dir)
    lock = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    known = lock.get(name)
    if known is not None:
        if known.get("sha256") != sha256:
            raise ModelError(f"{source_id} changed since it was first pulled as {name} (sha256 {sha256[:12]}, "
                             f"recorded {str(known.get('sha256'))[:12]}); refusing it — remove {name} from {path} "
                             f"to accept the new file")
        return known
    lock[name] = {"source": source_id, "size": size, "sha256": sha256, **(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(lock, indent=2, sort_keys=True) + "\n")
    return lock[name]


def _commit_of(path: Path) -> str:
    """The commit a file of the HF cache belongs to (``…/snapshots/<commit>/…``)."""
    match = re.search(r"/snapshots/([0-9a-f]{40})/", path.as_posix())
    return match.group(1) if match else ""


def pull_hf_entry(entry: Any, *, cache_dir: str | os.PathLike | None = None, unsafe_pickle: bool = False) -> Path:
    """Download ``entry.source`` (repo, path, revision) and import it as ``entry.name``."""
    from soundmap.download import sha256_of
    from soundmap.hub import hub_file
    from soundmap.models.checkpoint import import_checkpoint

    source = entry.source
    repo, filename, revision = source["repo"], source["path"], source.get("revision", "main")
    local = hub_file(repo, filename, revision=revision)
    sha = sha256_of(local)
    commit = _commit_of(local)
    record_or_verify(entry.name, source_id=f"hf://{repo}/{filename}", size=local.stat().st_size, sha256=sha,
                     cache_dir=cache_dir, extra={"commit": commit, "revision": revision})
    provenance = {"url": f"hf://{repo}@{commit or revision}/{filename}", "checkpoint_sha256": sha,
                  "registry_name": entry.name, "dataset": entry.dataset, "experiment": entry.experiment,
                  "licence": entry.licence or ""}
    return import_checkpoint(local, entry.name, unsafe_pickle=unsafe_pickle, cache_dir=cache_dir,
                             provenance=provenance)
