"""HTTP(S) downloads of large files: resumable, verified, with a progress bar.

The file grows as ``<dest>.part``; an interrupted download resumes from there with an HTTP
``Range`` request (a server that ignores it, answering 200, makes it start over). Only a complete
file whose size and SHA-256 match (when known) is renamed onto ``dest``; a mismatch deletes the
``.part`` so a bad file is never kept or resumed.

Google Drive: a *file* link (``drive.google.com/file/d/ID/…``, ``open?id=ID``, ``uc?id=ID``) is
rewritten to the direct ``drive.usercontent.google.com/download?id=ID&export=download&confirm=t``
form, which skips the large-file virus-scan page. Limits: folder links cannot be downloaded (no
public listing API without a key); files that are not shared publicly or over their download
quota come back as an HTML page, reported as such.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from soundmap.errors import DownloadError
from soundmap.progress import progress

CHUNK_BYTES = 1 << 16  # small reads: a dropped connection loses at most 64 KiB of progress
_DRIVE_FILE = re.compile(r"/file/d/([A-Za-z0-9_-]+)")


def normalize_url(url: str) -> str:
    """Turn a Google Drive file link into its direct-download form; other URLs pass unchanged."""
    parsed = urlparse(url)
    host = parsed.netloc.lower()
    if host not in ("drive.google.com", "docs.google.com", "drive.usercontent.google.com"):
        return url
    if "/folders/" in parsed.path:
        raise DownloadError("Google Drive folder links cannot be downloaded directly; open the folder in a "
                            "browser and use the link of the file itself (…/file/d/ID/view)")
    match = _DRIVE_FILE.search(parsed.path)
    file_id = match.group(1) if match else (parse_qs(parsed.query).get("id") or [None])[0]
    if not file_id:
        raise DownloadError(f"cannot find a Google Drive file id in {url}")
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _verify(part: Path, sha256: str | None, size: int | None, url: str) -> None:
    actual_size = part.stat().st_size
    if size is not None and actual_size != size:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url} gave {actual_size} bytes, expected {size}; the partial file was deleted, try again")
    if sha256:
        actual = sha256_of(part)
        if actual.lower() != sha256.lower():
            part.unlink(missing_ok=True)
            raise DownloadError(f"SHA-256 mismatch for {url} (got {actual[:12]}…, expected {sha256[:12]}…); "
                                "the file was deleted — the source changed or the transfer was corrupted")


def _fetch_once(session, url: str, part: Path, desc: str, timeout: float) -> None:
    """One GET, resuming from ``part``'s size when the server honours Range."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with session.get(url, headers=headers, stream=True, timeout=timeout, allow_redirects=True) as response:
        if response.status_code == 416 and offset:
            return  # nothing left to send: the .part is already complete
        if response.status_code not in (200, 206):
            raise DownloadError(f"{url} answered HTTP {response.status_code}; check the URL or try again later")
        if "text/html" in response.headers.get("Content-Type", "") and not url.endswith((".html", ".htm")):
            raise DownloadError(f"{url} returned a web page instead of the file (not public, quota exceeded or "
                                "a login page); download it in a browser and import the file")
        resumed = response.status_code == 206
        mode = "ab" if resumed else "wb"
        start = offset if resumed else 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        with open(part, mode) as handle, progress(total=total, desc=desc, unit="B", unit_scale=True,
                                                   unit_divisor=1024, initial=start) as bar:
            for block in response.iter_content(CHUNK_BYTES):
                handle.write(block)
                bar.update(len(block))


def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None, size: int | None = None,
             retries: int = 3, timeout: float = 60.0, desc: str | None = None, session=None) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify, rename; return ``dest``.

    An existing ``dest`` whose SHA-256 matches (or any existing ``dest`` when no hash is known) is
    reused without a request. Network errors are retried ``retries`` times with back-off, each
    retry resuming where the previous one stopped.
    """
    import requests

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and (not sha256 or sha256_of(dest).lower() == sha256.lower()):
        return dest
    url = normalize_url(url)
    part = dest.with_name(dest.name + ".part")
    session = session or requests.Session()
    for attempt in range(retries + 1):
        try:
            _fetch_once(session, url, part, desc or dest.name, timeout)
            break
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as err:
            if attempt == retries:
                raise DownloadError(f"download of {url} failed after {retries + 1} attempts ({type(err).__name__}); "
                                    "run the command again to resume") from None
            time.sleep(min(2 ** attempt, 10))
    _verify(part, sha256, size, url)
    os.replace(part, dest)
    return dest
