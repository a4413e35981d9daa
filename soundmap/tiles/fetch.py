"""Parallel, polite, resumable tile downloads into the :class:`~soundmap.tiles.cache.TileCache`.

Design:
- One pooled ``requests.Session`` (connection pool >= workers) shared by daemon worker threads:
  tile downloads are latency-bound, so threads, not processes.
- Only tiles missing from the cache are requested, so a second run downloads nothing and an
  interrupted run resumes where it stopped.
- Transient failures (timeouts, connection errors, 429, 5xx, a body that does not decode as an
  image) are retried with exponential backoff; a 429's ``Retry-After`` is honoured. A body is
  cached only after PIL has decoded it completely, so an HTML error page or a truncated JPEG
  never enters the cache.
- Tiles are committed in batches from the main thread, each batch one SQLite transaction: a
  Ctrl-C loses at most the batch in flight, never leaves half a tile.
- Every request is bounded (see :class:`RetryPolicy`): a connect timeout, a read timeout per
  socket read, a total deadline per request (a server that trickles bytes forever is cut off) and
  a body-size cap (an endless fast body is cut off). The image header is checked before any pixel
  is decoded: a tile whose declared size is not the source's ``tile_size`` (a decompression bomb
  declaring 10000² pixels, a wrong layer) is refused without allocating its pixels. Nothing refused
  is cached. Redirects are followed only to the source's own host (plus ``redirect_hosts`` the
  source lists) and only over http(s). ``Retry-After`` is honoured up to ``max_retry_after_s``
  (said on stderr while waiting); a longer wait defers the tile: it is reported, not waited for.
- A tile that still fails is recorded in the :class:`FetchReport` with the reason; the caller
  decides what that means (the CLI names the cells that lack imagery and exits 2).
"""

from __future__ import annotations

import email.utils
import io
import json
import itertools
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from .. import __version__
from ..errors import TileError
from ..progress import info, progress
from .cache import TileCache, TileKey
from .sources import TileSource, fill_template, template_problem

USER_AGENT = (f"soundmap/{__version__} (soundscape-mapping research tool; bounded concurrency, "
              f"honours Retry-After; python-requests/{requests.__version__})")

_TRANSIENT_ERRORS = (requests.Timeout, requests.ConnectionError,
                     requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one tile: ``retries`` extra attempts, waits of ``backoff_s · 2^attempt``
    (with jitter, capped at ``max_backoff_s``) unless the server says ``Retry-After``."""

    retries: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 60.0
    timeout_s: float = 30.0          #: read timeout: the longest silence between two socket reads
    max_retry_after_s: float = 60.0  #: a longer Retry-After defers the tile instead of waiting
    connect_timeout_s: float = 10.0
    deadline_s: float = 60.0         #: total time one request (headers and body) may take
    max_body_bytes: int = 8 * 2**20  #: a tile body larger than this is refused (tiles are ~10-200 KB)
    max_redirects: int = 5

    def backoff(self, attempt: int) -> float:
        """Exponential backoff for retry number ``attempt`` (0-based), with ±25 % jitter so that
        many workers do not retry in lock-step."""
        base = min(self.max_backoff_s, self.backoff_s * (2 ** attempt))
        return base * random.uniform(0.75, 1.25)


@dataclass
class FetchReport:
    """What a fetch did: counts, bytes, and every tile that could not be obtained (with why)."""

    source_name: str
    requested: int = 0
    cached: int = 0
    downloaded: int = 0
    bytes_downloaded: int = 0
    failed: dict[TileKey, str] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        """True when every requested tile is now in the cache."""
        return not self.failed and not self.interrupted

    def failure_reasons(self) -> Counter[str]:
        """How many tiles failed for each reason."""
        return Counter(self.failed.values())

    def summary(self) -> str:
        """One line for humans."""
        text = (f"{self.source_name}: {self.requested} tiles needed, {self.cached} already cached, "
                f"{self.downloaded} downloaded ({self.bytes_downloaded / 1e6:.1f} MB)")
        if self.failed:
            reasons = ", ".join(f"{reason} ×{n}" for reason, n in self.failure_reasons().most_common(3))
            text += f", {len(self.failed)} failed ({reasons})"
        return text

    def merge(self, other: "FetchReport") -> None:
        """Add another report's counts (e.g. several zoom levels of one command)."""
        self.requested += other.requested
        self.cached += other.cached
        self.downloaded += other.downloaded
        self.bytes_downloaded += other.bytes_downloaded
        self.failed.update(other.failed)
        self.interrupted = self.interrupted or other.interrupted


def make_session(workers: int, headers: dict[str, str] | None = None) -> requests.Session:
    """One session whose connection pool has room for every worker (no pool-full discards),
    with retries left to us (urllib3's own retries would not check image bodies)."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=max(10, workers), pool_maxsize=max(10, workers), max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    if headers:
        session.headers.update(headers)
    return session


def image_problem(data: bytes, tile_size: int | None = None) -> str | None:
    """Why ``data`` is not a usable image (None when PIL decodes it completely).

    ``Image.verify`` alone accepts truncated JPEGs, so the pixels are actually decoded, but only
    after the header's declared size was checked against ``tile_size``: a PNG declaring 10000²
    pixels (a decompression bomb) is refused from its header, before gigabytes are allocated.
    """
    from PIL import Image

    if not data:
        return "empty body"
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width == 0 or image.height == 0:
                return "image has no pixels"
            if tile_size is not None and image.size != (tile_size, tile_size):
                return f"image is {image.width}×{image.height}, the source's tile_size is {tile_size}"
            image.load()
    except Exception:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        return "not a decodable image"
    return None


class BodyRefused(Exception):
    """A response body broke a bound (size cap or deadline); the message says which."""


def read_bounded(response: requests.Response, *, max_bytes: int, deadline: float) -> bytes:
    """The body of a streamed ``response``, refusing one over ``max_bytes`` (by Content-Length
    before reading, or while reading) or still arriving at ``deadline`` (a ``time.monotonic``).

    ``read1`` returns after one socket read, so the deadline is checked at least once per read
    timeout even when a server trickles one byte at a time.
    """
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BodyRefused(f"body of {int(declared) / 2**20:.1f} MiB over the {max_bytes / 2**20:.0f} MiB cap")
    parts: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() > deadline:
            raise BodyRefused("body still arriving at the request deadline")
        part = response.raw.read1(65536, decode_content=True)
        if not part:
            return b"".join(parts)
        size += len(part)
        if size > max_bytes:
            raise BodyRefused(f"body over the {max_bytes / 2**20:.0f} MiB cap")
        parts.append(part)


def _redirect_target(response: requests.Response, url: str, allowed_hosts: set[str]) -> str:
    """Where a redirect goes, when it may be followed: http(s) and an allowed host only."""
    from urllib.parse import urljoin

    target = urljoin(url, response.headers.get("Location", ""))
    parts = urlsplit(target)
    if parts.scheme not in ("http", "https"):
        raise BodyRefused(f"redirect to a {parts.scheme or 'relative'}:// URL refused")
    if (parts.hostname or "") not in allowed_hosts:
        raise BodyRefused(f"redirect to {parts.hostname} refused (not the source's host; list it "
                          "under redirect_hosts in tiles.yaml to allow it)")
    return target


def bounded_get(session: requests.Session, url: str, *, policy: RetryPolicy, headers: dict[str, str] | None = None,
                allowed_hosts: Iterable[str] = ()) -> tuple[requests.Response, bytes]:
    """GET ``url`` within every bound of ``policy``: (response, body). Redirects are followed by
    hand, each hop checked by :func:`_redirect_target`; BodyRefused when a bound is broken."""
    deadline = time.monotonic() + policy.deadline_s
    allowed = {urlsplit(url).hostname or "", *allowed_hosts}
    for _ in range(policy.max_redirects + 1):
        response = session.get(url, headers=headers, stream=True, allow_redirects=False,
                               timeout=(policy.connect_timeout_s, policy.timeout_s))
        try:
            if response.is_redirect:
                url = _redirect_target(response, url, allowed)
                continue
            body = read_bounded(response, max_bytes=policy.max_body_bytes, deadline=deadline) \
                if response.status_code == 200 else b""
            return response, body
        finally:
            response.close()
    raise BodyRefused(f"more than {policy.max_redirects} redirects")


def retry_after_s(response: requests.Response, limit: float) -> float | None:
    """Seconds the server asked us to wait (``Retry-After`` as seconds or an HTTP date)."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, min(limit, seconds))


def _pause(stop: threading.Event, seconds: float) -> None:
    """Sleep between attempts, waking at once when the fetch is being aborted."""
    stop.wait(seconds)


def resolve_template(source: TileSource, session: requests.Session, api_key: str | None,
                     policy: RetryPolicy) -> tuple[str, tuple[str, ...]]:
    """The tile URL template and subdomains to use now.

    Most sources are static templates. Sources with ``metadata_url`` (Bing's documented way) ask
    the service once per fetch: the answer's ``imageUrl`` (with ``{subdomain}``, ``{quadkey}`` and
    ``{culture}`` placeholders) becomes the template. The cache key stays that of ``url`` in
    tiles.yaml, so the service rotating its URL does not orphan cached tiles.
    """
    if not source.metadata_url:
        return source.url, source.subdomains
    url = fill_template(source.metadata_url, 0, 0, 0, api_key=api_key)
    hint = f": check ${source.api_key_env}" if source.api_key_env else ""
    response, body = None, b""
    for attempt in range(policy.retries + 1):
        try:
            response, body = bounded_get(session, url, policy=policy)
        except BodyRefused as err:
            raise TileError(f"source {source.name!r}: imagery metadata answer refused ({err})") from None
        except _TRANSIENT_ERRORS as err:
            reason = type(err).__name__
        else:
            if response.status_code == 200:
                break
            reason = f"HTTP {response.status_code}"
            if response.status_code < 500 and response.status_code not in (408, 429):
                raise TileError(f"source {source.name!r}: imagery metadata request refused ({reason}){hint}")
        if attempt == policy.retries:
            raise TileError(f"source {source.name!r}: imagery metadata request failed ({reason}); "
                            "check the network and re-run")
        _pause(threading.Event(), policy.backoff(attempt))
    assert response is not None
    try:
        resource = json.loads(body)["resourceSets"][0]["resources"][0]
        template = str(resource["imageUrl"])
        subdomains = tuple(str(s) for s in resource.get("imageUrlSubdomains") or ())
    except (ValueError, KeyError, IndexError, TypeError):
        raise TileError(f"source {source.name!r}: unexpected imagery metadata answer (no resourceSets[0]."
                        "resources[0].imageUrl); check metadata_url in tiles.yaml") from None
    template = template.replace("{subdomain}", "{s}").replace("{culture}", "en-US")
    problem = template_problem(template, source.kind, subdomains)
    if problem:
        raise TileError(f"source {source.name!r}: metadata gave an unusable tile URL: {problem}")
    return template, subdomains


def download_tile(session: requests.Session, source: TileSource, tile: TileKey, *, api_key: str | None,
                  policy: RetryPolicy, stop: threading.Event, template: str | None = None,
                  subdomains: tuple[str, ...] | None = None) -> tuple[TileKey, bytes | None, str | None]:
    """Download one tile with retries; returns (tile, body, None) or (tile, None, reason)."""
    z, x, y = tile
    url = fill_template(template or source.url, z, x, y,
                        subdomains=source.subdomains if subdomains is None else subdomains, api_key=api_key)
    headers = dict(source.headers) or None
    reason = "not attempted"
    for attempt in range(policy.retries + 1):
        if stop.is_set():
            return tile, None, "aborted"
        delay = policy.backoff(attempt)
        try:
            response, body = bounded_get(session, url, policy=policy, headers=headers,
                                         allowed_hosts=source.redirect_hosts)
        except BodyRefused as err:  # a hostile or broken server: retrying would only repeat it
            return tile, None, str(err)
        except _TRANSIENT_ERRORS as err:
            reason = f"{type(err).__name__}"
        else:
            status = response.status_code
            if status == 200:
                if response.headers.get("X-VE-Tile-Info", "").lower() == "no-tile":
                    return tile, None, "no imagery at this tile (server placeholder)"
                problem = image_problem(body, source.tile_size)
                if problem is None:
                    return tile, body, None
                if problem.startswith("image is "):  # a wrong size will not change on retry
                    return tile, None, problem
                reason = problem
            elif status == 429 or status >= 500 or status == 408:
                reason = "HTTP 429 (rate limited)" if status == 429 else f"HTTP {status}"
                asked = retry_after_s(response, float("inf"))  # 429 and 503 may say
                if asked is not None and asked > policy.max_retry_after_s:
                    return tile, None, (f"deferred: the server asked to wait {asked:.0f} s (Retry-After), over the "
                                        f"{policy.max_retry_after_s:.0f} s cap; re-run later")
                if asked is not None and attempt < policy.retries:
                    info(f"tile {z}/{x}/{y}: waiting {asked:.1f} s as the server asks (Retry-After)")
                delay = asked if asked is not None else delay
            else:
                return tile, None, _permanent_reason(status, source)
        if attempt < policy.retries:
            _pause(stop, delay)
    return tile, None, reason


def _permanent_reason(status: int, source: TileSource) -> str:
    if status == 404:
        return "HTTP 404 (no tile there)"
    if status in (401, 403) and source.api_key_env:
        return f"HTTP {status} (check the API key in ${source.api_key_env})"
    return f"HTTP {status}"


def _is_fatal_reason(reason: str) -> bool:
    """Failures that, when every tile so far has had them, mean nothing will work: the host is
    unreachable or refuses us. Worth stopping early instead of retrying thousands of tiles."""
    return reason.startswith(("HTTP 401", "HTTP 403")) or reason in {"ConnectionError", "ConnectTimeout", "SSLError"}


def fetch_tiles(source: TileSource, tiles: Iterable[TileKey], cache: TileCache, *, workers: int = 16,
                retries: int = 5, timeout: float = 30.0, backoff: float = 0.5,
                policy: RetryPolicy | None = None, session: requests.Session | None = None,
                commit_every: int = 64, desc: str = "tiles",
                on_tile: Callable[[TileKey, bool], None] | None = None,
                give_up_after: int | None = None) -> FetchReport:
    """Download every tile of ``tiles`` (z, x, y) not yet in ``cache``; return a :class:`FetchReport`.

    ``on_tile(tile, ok)`` is called in the calling thread after each tile completes (hook for
    progress reporting and tests). Exceptions in the loop (Ctrl-C included) stop the workers,
    commit the complete tiles already downloaded, and propagate. When the first
    ``give_up_after`` tiles (default ``max(16, 2 × workers)``) all fail because the host is
    unreachable or refuses us (401/403), a one-line :class:`TileError` ends the fetch early.
    Workers are daemon threads, so Ctrl-C exits at once even with requests in flight.
    """
    if not source.is_remote:
        raise ValueError(f"source {source.name!r} is a local raster; there is nothing to fetch")
    policy = policy or RetryPolicy(retries=retries, backoff_s=backoff, timeout_s=timeout)
    wanted = list(dict.fromkeys((int(z), int(x), int(y)) for z, x, y in tiles))
    todo = cache.missing(source.cache_key, wanted)
    report = FetchReport(source_name=source.name, requested=len(wanted), cached=len(wanted) - len(todo))
    if not todo:
        return report
    api_key = source.api_key()  # a missing key fails before any request, with a one-line message
    workers = max(1, min(int(workers), len(todo)))
    give_up_after = give_up_after or max(16, 2 * workers)
    own_session = session is None
    session = session or make_session(workers)
    stop = threading.Event()
    batch: list[tuple[TileKey, bytes]] = []
    bar = progress(total=len(todo), desc=desc, unit="tile")
    try:
        template, subdomains = resolve_template(source, session, api_key, policy)
        results = _start_workers(todo, workers, stop, lambda tile: download_tile(
            session, source, tile, api_key=api_key, policy=policy, stop=stop, template=template,
            subdomains=subdomains))
        for _ in range(len(todo)):
            outcome = results.get()
            if isinstance(outcome, BaseException):
                raise outcome  # a bug in a worker: keep its traceback
            tile, body, reason = outcome
            if body is None:
                report.failed[tile] = reason or "unknown error"
                _check_hopeless(report, template, give_up_after)
            else:
                batch.append((tile, body))
                report.downloaded += 1
                report.bytes_downloaded += len(body)
                if len(batch) >= commit_every:
                    cache.put_many(source.cache_key, batch)
                    batch.clear()
            bar.update(1)
            if on_tile is not None:
                on_tile(tile, body is not None)
        cache.put_many(source.cache_key, batch)
        batch.clear()
    except BaseException:
        report.interrupted = True
        stop.set()
        try:
            cache.put_many(source.cache_key, batch)  # complete, verified tiles are worth keeping
        except Exception:
            pass
        raise
    finally:
        stop.set()
        bar.close()
        if own_session:
            session.close()
    return report


def _check_hopeless(report: FetchReport, template: str, give_up_after: int) -> None:
    """Raise a TileError when nothing has worked and every failure says nothing will."""
    if report.downloaded or len(report.failed) < give_up_after:
        return
    reasons = report.failure_reasons()
    if all(_is_fatal_reason(reason) for reason in reasons):
        reason = reasons.most_common(1)[0][0]
        host = urlsplit(template).hostname or template
        raise TileError(f"the first {len(report.failed)} tiles from {host} all failed ({reason}); check the "
                        "network, the source URL or API key, then re-run (cached tiles are kept)")


_DONE = object()


def _put_unless_stopped(tasks: "queue.Queue[Any]", item: Any, stop: threading.Event) -> bool:
    """Put ``item`` on the bounded queue, waiting in short slices so that ``stop`` (Ctrl-C, a fatal
    failure) is noticed while the queue is full; False when stopped before it went in."""
    while not stop.is_set():
        try:
            tasks.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _start_workers(todo: list[TileKey], workers: int, stop: threading.Event,
                   work: Callable[[TileKey], tuple[TileKey, bytes | None, str | None]]) -> "queue.Queue[Any]":
    """Run ``work`` over ``todo`` on daemon threads; results arrive on the returned queue.

    Daemon threads (not a ThreadPoolExecutor, whose threads are joined at exit) so that Ctrl-C
    leaves at once instead of waiting for requests in flight to time out. The task queue is
    bounded, so millions of tiles never become millions of queued objects.
    """
    tasks: queue.Queue[Any] = queue.Queue(maxsize=4 * workers)
    results: queue.Queue[Any] = queue.Queue()

    def feed() -> None:
        for item in itertools.chain(todo, itertools.repeat(_DONE, workers)):
            if not _put_unless_stopped(tasks, item, stop):
                break

    def run() -> None:
        while not stop.is_set():
            try:
                tile = tasks.get(timeout=0.2)
            except queue.Empty:
                continue
            if tile is _DONE:
                return
            try:
                results.put(work(tile))
            except BaseException as exc:  # surfaced in the calling thread
                results.put(exc)
                return

    threading.Thread(target=feed, name="soundmap-fetch-feed", daemon=True).start()
    for i in range(workers):
        threading.Thread(target=run, name=f"soundmap-fetch-{i}", daemon=True).start()
    return results
