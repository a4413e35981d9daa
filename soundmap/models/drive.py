"""Everything Google-Drive-specific: list a public folder, find a file by its path, download it.

The PSM authors publish their checkpoints as public Drive *folders* (one wandb run directory per
experiment, e.g. ``z2tpbd70/epoch=0-I2S_Recall=0.666.ckpt``); the files' own ids are not
published. So a pull lists the folder page, walks the recorded path down the sub-folders, and
downloads that one file.

Why not gdown: it recognises Drive URLs by their host name (drive.google.com / docs.google.com)
and builds the folder and ``uc?id=`` URLs with that host written into the code, so it cannot be
pointed at a loopback test server without patching it. This small client does the same things
with both hosts taken from settings:

* ``SOUNDMAP_DRIVE_URL`` (default ``https://drive.google.com``): folder pages;
* ``SOUNDMAP_DRIVE_DOWNLOAD_URL`` (default ``https://drive.usercontent.google.com``): files.

Page layouts handled (modelled on what gdown 5.2 parses, i.e. Drive as of 2024–2025):

* folder page ``/drive/folders/ID``: a ``<script>`` sets ``window['_DRIVE_ivd'] = '…'``, a
  JavaScript string (``\\xNN`` escapes) holding JSON whose first element lists the children, each
  ``[id, [parent ids], name, mime type, …]``; sub-folders have the mime type
  ``application/vnd.google-apps.folder``. Drive embeds at most 50 children this way;
* fallback, ``/embeddedfolderview?id=ID``: one ``<div class="flip-entry" id="entry-ID">`` per
  child, a link (``/drive/folders/`` for folders) and a ``flip-entry-title`` with the name;
* large file: instead of the file, ``/download?id=ID&export=download`` answers the "can't scan
  this file for viruses" page, a ``<form id="download-form" action=…>`` whose hidden inputs
  (``id``, ``export``, ``confirm``, ``uuid``) make the URL that sends the file;
* quota: a page saying "Too many users have viewed or downloaded this file recently" (a browser
  cookie export given with ``--cookies`` may get past it);
* any other page where the file was expected (login, removed file): refused as such.

Every refusal is a one-line :class:`DriveError` naming the manual route.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

from soundmap.download import check_url, download, require_online, timeouts
from soundmap.errors import DownloadError, InputError
from soundmap.models.sources import Fetched

DRIVE_URL = "https://drive.google.com"
DRIVE_DOWNLOAD_URL = "https://drive.usercontent.google.com"
FOLDER_MIME = "application/vnd.google-apps.folder"
LISTING_LIMIT = 50
"""Children Drive embeds in a folder page; a folder this full may be listed only in part."""
MAX_DEPTH = 8
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) soundmap (https://github.com/mvrl/PSM checkpoints)"

_IVD = re.compile(r"""window\[\s*['"]_DRIVE_ivd['"]\s*\]\s*=\s*'((?:[^'\\]|\\.)*)'""", re.S)
_JS_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|.)", re.S)
_JS_SIMPLE = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "0": "\0"}
_QUOTA = re.compile(r"too many users have viewed or downloaded this file", re.I)


class DriveError(DownloadError):
    """Drive refused or answered something unexpected (quota, changed layout, missing file)."""


@dataclass(frozen=True)
class DriveItem:
    id: str
    name: str
    mime: str

    @property
    def is_folder(self) -> bool:
        return self.mime == FOLDER_MIME


def drive_url() -> str:
    """Base URL of folder pages (``SOUNDMAP_DRIVE_URL``), read at call time."""
    return (os.environ.get("SOUNDMAP_DRIVE_URL") or DRIVE_URL).rstrip("/")


def drive_download_url() -> str:
    """Base URL of file downloads (``SOUNDMAP_DRIVE_DOWNLOAD_URL``), read at call time."""
    return (os.environ.get("SOUNDMAP_DRIVE_DOWNLOAD_URL") or DRIVE_DOWNLOAD_URL).rstrip("/")


def folder_url(folder_id: str) -> str:
    return f"{drive_url()}/drive/folders/{folder_id}"


def file_download_url(file_id: str) -> str:
    return f"{drive_download_url()}/download?id={file_id}&export=download"


# --------------------------------------------------------------------------------------------
# Session (cookies)
# --------------------------------------------------------------------------------------------
def make_session(cookies: str | os.PathLike | None = None):
    """A requests session with a browser-like User-Agent and, optionally, a browser cookie export
    (Netscape ``cookies.txt``, as the "Get cookies.txt" extensions and gdown use) so that a user
    signed in to Google can get past the quota page."""
    import requests

    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    if cookies:
        for cookie in _load_cookies(Path(cookies).expanduser()):
            session.cookies.set_cookie(cookie)
    return session


def _load_cookies(path: Path):
    from http.cookiejar import LoadError, MozillaCookieJar

    jar = MozillaCookieJar(str(path))
    try:
        jar.load(ignore_discard=True, ignore_expires=True)
    except FileNotFoundError:
        raise InputError(f"cookie file {path} does not exist; export your browser's cookies for "
                         "drive.google.com in Netscape cookies.txt format") from None
    except (LoadError, OSError) as err:
        raise InputError(f"cannot read cookie file {path} ({str(err).splitlines()[0] if str(err) else 'bad format'}); "
                         "export it in Netscape cookies.txt format") from None
    cookies = list(jar)
    for cookie in cookies:
        if not cookie.expires:  # exports write session cookies with expiry 0: keep sending them
            cookie.expires, cookie.discard = None, False
    return cookies


# --------------------------------------------------------------------------------------------
# Folder listing
# --------------------------------------------------------------------------------------------
def _js_unescape(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if len(code) > 1 and code[0] in "xu":
            return chr(int(code[1:], 16))
        return _JS_SIMPLE.get(code, code)

    return _JS_ESCAPE.sub(one, text)


def parse_folder_page(page: str) -> list[DriveItem] | None:
    """Children of a folder page (``_DRIVE_ivd`` layout); None when the page lacks that data; a
    DriveError when the data is there but shaped differently (Drive changed it)."""
    match = _IVD.search(page)
    if match is None:
        return None
    try:
        data = json.loads(_js_unescape(match.group(1)))
        rows = data[0] or []
        items = [DriveItem(id=row[0], name=row[2], mime=row[3]) for row in rows]
    except (ValueError, TypeError, IndexError, KeyError):
        raise DriveError("the Drive folder page's file list has a layout soundmap does not know "
                         "(Drive changed it)") from None
    if not all(isinstance(v, str) and v for item in items for v in (item.id, item.name, item.mime)):
        raise DriveError("the Drive folder page's file list has a layout soundmap does not know (Drive changed it)")
    return items


class _EmbeddedListing(HTMLParser):
    """The ``embeddedfolderview`` layout: ``div.flip-entry#entry-ID`` > ``a[href]`` … ``.flip-entry-title``."""

    def __init__(self) -> None:
        super().__init__()
        self.items: list[DriveItem] = []
        self._id: str | None = None
        self._folder = False
        self._in_title = False
        self._title: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {k: v or "" for k, v in attrs}
        classes = attr.get("class", "").split()
        if tag == "div" and "flip-entry" in classes and attr.get("id", "").startswith("entry-"):
            self._id, self._folder, self._title = attr["id"][len("entry-"):], False, []
        elif tag == "a" and self._id is not None and "/folders/" in attr.get("href", ""):
            self._folder = True
        elif self._id is not None and "flip-entry-title" in classes:
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if self._in_title and tag == "div":
            self._in_title = False
            name = "".join(self._title).strip()
            if self._id and name:
                self.items.append(DriveItem(self._id, name, FOLDER_MIME if self._folder else "application/octet-stream"))
            self._id = None

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self._title.append(data)


def parse_embedded_page(page: str) -> list[DriveItem] | None:
    """Children of an ``embeddedfolderview`` page; None when it has no ``flip-entry`` rows."""
    if "flip-entry" not in page:
        return None
    parser = _EmbeddedListing()
    parser.feed(page)
    return parser.items


PAGE_DEADLINE_S = 120.0
"""Seconds one folder page may take to arrive in full (a trickling server is cut off)."""


def _get_page(session, url: str) -> tuple[int, str]:
    """GET a (small) web page: timeouts per read, a deadline for the whole page, a size bound."""
    import time

    import requests

    from soundmap.download import HTML_PAGE_LIMIT

    check_url(url)
    for attempt in range(3):
        try:
            with session.get(url, timeout=timeouts(), stream=True) as response:
                deadline, chunks, size = time.monotonic() + PAGE_DEADLINE_S, [], 0
                for block in response.iter_content(1 << 16):
                    chunks.append(block)
                    size += len(block)
                    if size > HTML_PAGE_LIMIT or time.monotonic() > deadline:
                        raise DriveError(f"{url} sent an oversized or endless page")
                return response.status_code, b"".join(chunks).decode(response.encoding or "utf-8", errors="replace")
        except (requests.ConnectionError, requests.Timeout) as err:
            if attempt == 2:
                raise DriveError(f"could not reach {url} ({type(err).__name__})") from None
    raise AssertionError("unreachable")


def list_folder(session, folder_id: str) -> list[DriveItem]:
    """The children of one public folder (no download), from its page or the embedded view."""
    url = folder_url(folder_id)
    status, page = _get_page(session, url)
    if status == 404:
        raise DriveError(f"the Drive folder {url} does not exist or is not public any more")
    if status != 200:
        raise DriveError(f"the Drive folder {url} answered HTTP {status}")
    if _QUOTA.search(page):
        raise DriveError(f"Drive refuses to list {url} right now (too many users); try again later")
    items = parse_folder_page(page)
    if items is None:
        status, page = _get_page(session, f"{drive_url()}/embeddedfolderview?id={folder_id}")
        items = parse_embedded_page(page) if status == 200 else None
    if items is None:
        raise DriveError(f"the Drive folder page {url} has no file list soundmap can read (Drive changed "
                         "its layout, or the folder is not public)")
    return items


def list_tree(session, folder_id: str, prefix: str = "", depth: int = 0) -> dict[str, DriveItem]:
    """Every file under a folder, recursively, keyed by its path inside it (``run/epoch=….ckpt``)."""
    files: dict[str, DriveItem] = {}
    for item in list_folder(session, folder_id):
        path = f"{prefix}{item.name}"
        if item.is_folder and depth < MAX_DEPTH:
            files.update(list_tree(session, item.id, path + "/", depth + 1))
        elif not item.is_folder:
            files[path] = item
    return files


def resolve_path(session, folder_id: str, path: str) -> DriveItem:
    """The file at ``path`` inside the folder, found by listing only the sub-folders on the way."""
    parts = PurePosixPath(path).parts
    if not parts or len(parts) > MAX_DEPTH:
        raise DriveError(f"bad path {path!r} inside the Drive folder")
    current, walked = folder_id, []
    for depth, part in enumerate(parts):
        items = list_folder(session, current)
        last = depth == len(parts) - 1
        match = next((i for i in items if i.name == part and i.is_folder != last), None)
        if match is None:
            where = "/".join(walked) + "/" if walked else "the folder"
            names = ", ".join(sorted(i.name + ("/" if i.is_folder else "") for i in items)[:6]) or "nothing"
            more = f" (only the first {LISTING_LIMIT} are listed)" if len(items) >= LISTING_LIMIT else ""
            raise DriveError(f"{path} is not in the Drive folder: {where} holds {names}{more}")
        walked.append(part)
        current = match.id
    return match


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------
class _PageReader(HTMLParser):
    """The confirmation form (``form#download-form`` and its hidden inputs) and the visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.inputs: list[tuple[str, str]] = []
        self.text: list[str] = []
        self._in_form = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {k: v or "" for k, v in attrs}
        if tag == "form" and attr.get("id") == "download-form":
            self._in_form, self.action = True, attr.get("action", "")
        elif tag == "input" and self._in_form and attr.get("type", "").lower() == "hidden" and attr.get("name"):
            self.inputs.append((attr["name"], attr.get("value", "")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def confirmation_url(page: str, url: str, status: int) -> str:
    """Where to go when Drive answered a web page instead of the file: the URL of the virus-scan
    confirmation form; otherwise a one-line DriveError (quota, login page, any other page)."""
    reader = _PageReader()
    reader.feed(page)
    if reader.action is not None:
        action = urlsplit(urljoin(url, reader.action))
        query = parse_qsl(action.query) + reader.inputs
        return urlunsplit(action._replace(query=urlencode(query)))
    text = " ".join(" ".join(reader.text).split())
    if _QUOTA.search(text):
        raise DriveError("Drive says too many users have viewed or downloaded this file recently (quota); try "
                         "again later, or pass --cookies FILE with your browser's cookies.txt for drive.google.com")
    if "accounts.google.com" in page or re.search(r"\bsign in\b", text, re.I):
        raise DriveError("Drive answered a sign-in page instead of the checkpoint (the file is not public any more)")
    raise DriveError(f"Drive answered a web page instead of the checkpoint (HTTP {status}: "
                     f"{text[:80] or 'no text'})")


def download_file(session, file_id: str, dest: Path, *, size: int | None = None, max_bytes: int | None = None,
                  desc: str | None = None) -> Path:
    """Download one Drive file to ``dest`` (resumable ``.part``), through the confirmation page."""
    return download(file_download_url(file_id), dest, size=size, max_bytes=max_bytes, session=session,
                    on_html=confirmation_url, desc=desc or dest.name)


def manual_route(entry: Any) -> str:
    """The by-hand way, for every error message."""
    source = entry.source
    return (f"or download {source['path']} from {folder_url(source['folder_id'])} in a browser and run "
            f"`soundmap models import FILE --name {entry.name}`")


def fetch_checkpoint(entry: Any, dest_dir: Path, *, cookies: str | os.PathLike | None = None,
                     size: int | None = None, max_bytes: int | None = None, **_: Any) -> Fetched:
    """The ``drive`` source kind: list the entry's folder, find ``source.path``, download that file
    to ``dest_dir/NAME.ckpt``. Errors are one line ending with the manual route."""
    source = entry.source
    manual = manual_route(entry)
    require_online(f"{source['path']} from the Drive folder {folder_url(source['folder_id'])}",
                   manual.removeprefix("or "))
    dest = Path(dest_dir) / f"{entry.name}.ckpt"
    try:
        session = make_session(cookies)
        item = resolve_path(session, source["folder_id"], source["path"])
        download_file(session, item.id, dest, size=size, max_bytes=max_bytes, desc=entry.name)
    except DownloadError as err:
        raise type(err)(f"{err}; {manual}") from None
    return Fetched(dest, f"drive:{item.id}", dest.stat().st_size)
