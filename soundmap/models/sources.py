"""Where a registry checkpoint comes from: one fetch function per ``source.kind``.

A fetch function is ``fetch(entry, dest_dir, **options) -> Fetched(path, source_id, size)``:
it puts the checkpoint on disk (under ``dest_dir`` when soundmap owns the copy, in the Hugging
Face cache for ``hf``) and says what it resolved to, for the lock file. ``options`` may carry
``cookies`` (a browser cookie export), ``size`` (exact, from the registry) and ``max_bytes`` (a
cap, from the lock file); a kind ignores what it has no use for. The kinds live in
:data:`soundmap.models.registry.FETCHERS`:

* ``drive`` — :func:`soundmap.models.drive.fetch_checkpoint` (a file inside a public Drive folder);
* ``hf`` — :func:`fetch_hf` (a file of a Hugging Face repository, at a revision);
* ``url`` — :func:`fetch_url` (any http(s) URL, Drive *file* links included).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple


class Fetched(NamedTuple):
    """The checkpoint on disk, the id it resolved to (Drive file id, HF commit, URL) and its size."""

    path: Path
    source_id: str
    size: int


def fetch_url(entry: Any, dest_dir: Path, *, url: str | None = None, size: int | None = None,
              max_bytes: int | None = None, **_: Any) -> Fetched:
    """The ``url`` kind (and ``models pull --url``): a resumable, bounded http(s) download."""
    from urllib.parse import urlparse

    from soundmap.download import DRIVE_HOSTS, download
    from soundmap.models.drive import confirmation_url

    source_url = url or entry.source["url"]
    on_html = confirmation_url if (urlparse(source_url).hostname or "") in DRIVE_HOSTS else None
    dest = download(source_url, Path(dest_dir) / f"{entry.name}.ckpt", size=size, max_bytes=max_bytes,
                    desc=entry.name, on_html=on_html)  # a Drive file link may still show the scan page
    return Fetched(dest, f"url:{source_url}", dest.stat().st_size)


def fetch_hf(entry: Any, dest_dir: Path, **_: Any) -> Fetched:
    """The ``hf`` kind: ``source.path`` of ``source.repo`` at ``source.revision`` (default main),
    into the Hugging Face cache, which keeps it (``hf cache`` manages it); the lock records the
    commit it resolved to."""
    from soundmap.hub import hub_file

    source = entry.source
    repo, filename = source["repo"], source["path"]
    path = hub_file(repo, filename, revision=source.get("revision") or "main")
    return Fetched(path, f"hf:{repo}@{snapshot_commit(path, filename)}:{filename}", path.stat().st_size)


def snapshot_commit(path: Path, filename: str) -> str:
    """The commit of a file in the hub cache (``…/snapshots/<commit>/<filename>``)."""
    snapshot = Path(path).parents[len(Path(filename).parts) - 1]
    return snapshot.name if snapshot.parent.name == "snapshots" else "unknown"


def describe(source: dict[str, Any]) -> str:
    """Short human form of a source, for ``models list --available``."""
    kind = source.get("kind")
    if kind == "drive":
        return f"Drive folder {source.get('folder_id')}"
    if kind == "hf":
        return f"HF {source.get('repo')}"
    if kind == "url":
        from urllib.parse import urlparse

        return f"URL {urlparse(str(source.get('url'))).netloc}"
    return "manual import only"


def owned(fetched: Fetched, dest_dir: str | os.PathLike) -> bool:
    """True when the fetched file is soundmap's own copy (deleted after import unless kept)."""
    return Path(fetched.path).resolve().is_relative_to(Path(dest_dir).resolve())
