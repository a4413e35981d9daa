"""HTTP(S) downloads of large files: resumable, verified, with a progress bar.

The file grows as ``<dest>.part``; an interrupted download resumes from there with an HTTP
``Range`` request (a server that ignores it, answering 200, makes it start over). Only a complete
file whose size and SHA-256 match (when known) is renamed onto ``dest``; a mismatch deletes the
``.part`` so a bad file is never kept or resumed.

Google Drive: a *file* link (``drive.google.com/file/d/ID/…``, ``open?id=ID``, ``uc?id=ID``) is
rewritten to the direct ``drive.usercontent.google.com/download?id=ID&export=download&confirm=t``
form, which skips the large-file virus-scan page. Limits: folder links cannot be downloaded (no
public listing API without a key); files that are not shared publicly or over their download
quota come back as an HTML page, reported as such (the Drive *folder* client with the
confirmation-page handshake is :mod:`soundmap.models.drive`; it passes an ``on_html`` hook here).

Bounded: only ``http``/``https`` URLs are fetched; every request has a connect and a read timeout;
a whole download has a deadline (``SOUNDMAP_DOWNLOAD_DEADLINE`` seconds, default 6 h, after which
the ``.part`` is kept for a later resume); a body longer than the expected size (or ``max_bytes``)
is cut off and deleted. ``SOUNDMAP_OFFLINE=1`` refuses every download before any connection.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from soundmap.errors import DownloadError
from soundmap.progress import progress

CHUNK_BYTES = 1 << 16  # small reads: a dropped connection loses at most 64 KiB of progress
CONNECT_TIMEOUT_S = 15.0
"""Seconds to wait for a TCP/TLS connection (``SOUNDMAP_DOWNLOAD_CONNECT_TIMEOUT``)."""
READ_TIMEOUT_S = 60.0
"""Seconds a server may stay silent mid-response (``SOUNDMAP_DOWNLOAD_READ_TIMEOUT``)."""
DEADLINE_S = 6 * 3600.0
"""Seconds one download may take in all, retries included (``SOUNDMAP_DOWNLOAD_DEADLINE``): a 1 GB
checkpoint at 50 KB/s still fits; a server trickling bytes forever does not."""
HTML_PAGE_LIMIT = 4 << 20
"""Largest web page read into memory when HTML arrives where a file was expected."""
MAX_REDIRECT_PAGES = 3
"""Confirmation pages followed (``on_html``) before giving up."""
ALLOWED_SCHEMES = ("http", "https")

#: ``on_html(page_text, url, status) -> next_url``: what to do when a web page arrives instead of
#: the file (follow a confirmation form, or raise a one-line DownloadError naming the cause).
HtmlHandler = Callable[[str, str, int], str]


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    try:
        return float(value) if value else default
    except ValueError:
        raise DownloadError(f"{name}={value!r} is not a number of seconds") from None


def timeouts() -> tuple[float, float]:
    """(connect, read) timeouts of every download request, from the environment at call time."""
    return (_env_float("SOUNDMAP_DOWNLOAD_CONNECT_TIMEOUT", CONNECT_TIMEOUT_S),
            _env_float("SOUNDMAP_DOWNLOAD_READ_TIMEOUT", READ_TIMEOUT_S))


def offline() -> bool:
    """True when ``SOUNDMAP_OFFLINE`` asks soundmap never to touch the network."""
    return os.environ.get("SOUNDMAP_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def require_online(what: str, fix: str) -> None:
    """A one-line DownloadError before any connection when ``SOUNDMAP_OFFLINE=1``; ``what`` names
    the missing file, ``fix`` the way to provide it without the network."""
    if offline():
        raise DownloadError(f"SOUNDMAP_OFFLINE=1: not downloading {what}; {fix}, or unset SOUNDMAP_OFFLINE")


def check_url(url: str) -> str:
    """Only http(s) URLs are downloaded: ``file://``, ``ftp://`` and friends are refused in one line
    (a local checkpoint is imported, not downloaded)."""
    scheme = urlparse(url).scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise DownloadError(f"cannot download {url!r}: only http:// and https:// URLs are fetched; for a file "
                            "on disk run `soundmap models import FILE --name NAME`")
    return url
_DRIVE_FILE = re.compile(r"/file/d/([A-Za-z0-9_-]+)")
DRIVE_HOSTS = ("drive.google.com", "docs.google.com", "drive.usercontent.google.com")


def normalize_url(url: str) -> str:
    """Turn a Google Drive file link into its direct-download form; other URLs pass unchanged."""
    parsed = urlparse(url)
    host = parsed.netloc.lower()
    if host not in DRIVE_HOSTS:
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


def _looks_like_html(first: bytes) -> bool:
    """A body that starts like a web page (checkpoints are zip or pickle files, never text)."""
    head = first[:512].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<body"))


def _read_page(response, first: bytes) -> str:
    """The rest of a (small) web page that arrived instead of a file, as text."""
    chunks, size = [first], len(first)
    for block in response.iter_content(CHUNK_BYTES):
        chunks.append(block)
        size += len(block)
        if size > HTML_PAGE_LIMIT:
            break
    return b"".join(chunks).decode(response.encoding or "utf-8", errors="replace")


def _not_a_file(url: str) -> DownloadError:
    return DownloadError(f"{url} returned a web page instead of the file (not public, quota exceeded or "
                         "a login page); download it in a browser and import the file")


def _fetch_once(session, url: str, part: Path, desc: str, *, on_html: HtmlHandler | None,
                max_bytes: int | None, deadline: float, timeout: tuple[float, float]) -> None:
    """One download attempt, resuming from ``part``'s size when the server honours Range; web pages
    that arrive instead of the file go to ``on_html`` (which may name a URL to follow)."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    for _ in range(MAX_REDIRECT_PAGES + 1):
        check_url(url)
        with session.get(url, headers=headers, stream=True, timeout=timeout, allow_redirects=True) as response:
            if response.status_code == 416 and offset:
                return  # nothing left to send: the .part is already complete
            chunks = response.iter_content(CHUNK_BYTES)
            first = next(chunks, b"") if response.status_code in (200, 206) or on_html else b""
            html = "text/html" in response.headers.get("Content-Type", "") or _looks_like_html(first)
            if html and on_html is not None:
                url = on_html(_read_page(response, first), url, response.status_code)
                continue
            if response.status_code not in (200, 206):
                raise DownloadError(f"{url} answered HTTP {response.status_code}; check the URL or try again later")
            if html and not url.endswith((".html", ".htm")):
                raise _not_a_file(url)
            _write_body(response, first, chunks, part, desc=desc, url=url, offset=offset,
                        max_bytes=max_bytes, deadline=deadline)
            return
    raise DownloadError(f"{url} kept answering with web pages instead of the file; download it in a browser")


def _write_body(response, first: bytes, chunks, part: Path, *, desc: str, url: str, offset: int,
                max_bytes: int | None, deadline: float) -> None:
    """Append (206) or write (200) the body to ``part``: never past ``max_bytes``, never past the
    deadline (the ``.part`` is then kept for a resume)."""
    resumed = response.status_code == 206
    start = offset if resumed else 0
    length = response.headers.get("Content-Length")
    total = start + int(length) if length and length.isdigit() else None
    if max_bytes is not None and total is not None and total > max_bytes:
        raise DownloadError(f"{url} announces {total} bytes, more than the {max_bytes} expected; not downloading it")
    written = start
    with open(part, "ab" if resumed else "wb") as handle, progress(
            total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, initial=start) as bar:
        for block in _chain(first, chunks):
            written += len(block)
            if max_bytes is not None and written > max_bytes:
                handle.close()
                part.unlink(missing_ok=True)
                raise DownloadError(f"{url} sent more than the {max_bytes} bytes expected; stopped and deleted "
                                    "the partial file (the source changed?)")
            handle.write(block)
            bar.update(len(block))
            if time.monotonic() > deadline:
                raise DownloadError(f"download of {url} did not finish within its deadline "
                                    "(SOUNDMAP_DOWNLOAD_DEADLINE); run the command again to resume")


def _chain(first: bytes, rest):
    if first:
        yield first
    yield from rest


def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None, size: int | None = None,
             retries: int | None = None, timeout: float | None = None, desc: str | None = None, session=None,
             on_html: HtmlHandler | None = None, max_bytes: int | None = None,
             deadline_s: float | None = None) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify, rename; return ``dest``.

    An existing ``dest`` whose SHA-256 matches (or any existing ``dest`` when no hash is known) is
    reused without a request. Network errors are retried ``retries`` times (default
    ``SOUNDMAP_DOWNLOAD_RETRIES`` or 3) with back-off, each retry resuming where the previous one
    stopped. ``size`` is checked exactly and caps the body;
    ``max_bytes`` only caps it. ``timeout`` (if given) replaces the read timeout.
    """
    import requests

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and (not sha256 or sha256_of(dest).lower() == sha256.lower()):
        return dest
    url = normalize_url(check_url(url))
    require_online(url, "copy the file here and import it with `soundmap models import FILE --name NAME`")
    part = dest.with_name(dest.name + ".part")
    session = session or requests.Session()
    connect_s, read_s = timeouts()
    limits = (connect_s, float(timeout) if timeout is not None else read_s)
    deadline = time.monotonic() + (deadline_s if deadline_s is not None else
                                   _env_float("SOUNDMAP_DOWNLOAD_DEADLINE", DEADLINE_S))
    cap = size if size is not None else max_bytes
    if retries is None:
        retries = int(_env_float("SOUNDMAP_DOWNLOAD_RETRIES", 3))
    for attempt in range(retries + 1):
        try:
            _fetch_once(session, url, part, desc or dest.name, on_html=on_html, max_bytes=cap,
                        deadline=deadline, timeout=limits)
            break
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as err:
            if attempt == retries or time.monotonic() > deadline:
                raise DownloadError(f"download of {url} failed after {attempt + 1} attempts ({type(err).__name__}); "
                                    "run the command again to resume") from None
            time.sleep(min(2 ** attempt, 10))
    _verify(part, sha256, size, url)
    os.replace(part, dest)
    return dest
