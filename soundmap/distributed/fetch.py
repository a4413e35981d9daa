"""``soundmap tiles fetch --scheduler``: tile downloads spread over a Dask cluster by block.

How it is split, and why:

- The tiles still missing from the cache are cut into batches of neighbouring tiles (the plan is
  sorted by z, x, y); each batch is one task, downloaded with the single-machine
  :func:`~soundmap.tiles.fetch.fetch_tiles` (same retries, backoff, Retry-After, image checks).
- Workers never write the tile cache: a task returns the verified tile bodies and the client is
  the only writer (one SQLite transaction per batch). SQLite must not be written from several
  machines over a network filesystem (its locking and WAL need one host), and this way workers do
  not even need to see the cache file.
- Politeness is global, not per worker: every request of every worker first takes a lease of one
  cluster-wide ``distributed.Semaphore`` (at most ``max_concurrent`` requests in flight over the
  whole cluster), and with ``max_per_second`` each lease is held at least
  ``max_concurrent / max_per_second`` seconds, which caps the cluster-wide request rate at
  ``max_per_second`` (N leases, each busy ≥ N/R s → ≤ R requests per second).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import requests

from ..errors import InputError
from ..progress import progress

TILES_PER_TASK = 256
"""Tiles per download task: enough to keep a task's threads busy, few enough to spread well."""

THREADS_PER_TASK = 8
"""Download threads inside one task (requests are latency-bound)."""


@dataclass(frozen=True)
class GlobalRateLimit:
    """A request budget shared by every worker of the cluster (see the module docstring)."""

    name: str
    max_concurrent: int = 16
    max_per_second: float | None = None

    @classmethod
    def create(cls, max_concurrent: int = 16, max_per_second: float | None = None) -> GlobalRateLimit:
        """A new limit with a unique name (one per run: leases of an old run never count)."""
        if max_concurrent < 1:
            raise InputError(f"the cluster-wide download concurrency must be at least 1, got {max_concurrent}")
        if max_per_second is not None and max_per_second <= 0:
            raise InputError(f"the cluster-wide request rate must be positive, got {max_per_second}")
        return cls(name=f"soundmap-tiles-{uuid.uuid4().hex[:12]}", max_concurrent=int(max_concurrent),
                   max_per_second=max_per_second)

    @property
    def min_hold_s(self) -> float:
        """Shortest time a request keeps its lease: what turns the concurrency cap into a rate cap."""
        return self.max_concurrent / self.max_per_second if self.max_per_second else 0.0

    def session(self, pool: int) -> requests.Session:
        """A pooled session (as :func:`~soundmap.tiles.fetch.make_session`) whose every request
        takes a lease of this limit first. Call it in the task's own thread: the semaphore binds
        to the worker there (the fetcher's download threads have no Dask context)."""
        from distributed import Semaphore

        from ..tiles.fetch import make_session

        semaphore = Semaphore(max_leases=self.max_concurrent, name=self.name)
        semaphore.loop  # noqa: B018 (binds the scheduler and event loop of this worker now)
        session = make_session(pool)
        session.__class__ = LimitedSession  # same object, same adapters and headers; request() gated
        session.limit = self  # type: ignore[attr-defined]
        session.semaphore = semaphore  # type: ignore[attr-defined]
        return session


class LimitedSession(requests.Session):
    """A ``requests.Session`` whose requests each hold a lease of a cluster-wide semaphore."""

    limit: GlobalRateLimit
    semaphore: Any

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        with self.semaphore:
            started = time.monotonic()
            try:
                return super().request(*args, **kwargs)
            finally:
                rest = self.limit.min_hold_s - (time.monotonic() - started)
                if rest > 0:
                    time.sleep(rest)


class _MemoryCache:
    """Stands in for the TileCache inside a task: nothing is cached yet, bodies are collected."""

    def __init__(self) -> None:
        self.tiles: list[tuple[tuple[int, int, int], bytes]] = []

    def missing(self, source_key: str, tiles: Iterable[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
        return list(tiles)

    def put_many(self, source_key: str, items: Iterable[tuple[tuple[int, int, int], bytes]]) -> int:
        before = len(self.tiles)
        self.tiles.extend(items)
        return len(self.tiles) - before


@dataclass
class DownloadedBatch:
    """What one download task returns: its report and the verified tile bodies."""

    report: Any  # FetchReport
    tiles: list[tuple[tuple[int, int, int], bytes]]


def download_batch(source: Any, tiles: Sequence[tuple[int, int, int]], *, policy: Any = None,
                   limit: GlobalRateLimit | None = None, threads: int = THREADS_PER_TASK) -> DownloadedBatch:
    """Task: download ``tiles`` with the single-machine fetcher, under the cluster-wide ``limit``."""
    from ..tiles.fetch import fetch_tiles

    memory = _MemoryCache()
    session = limit.session(threads) if limit is not None else None
    try:
        report = fetch_tiles(source, tiles, memory, workers=threads, policy=policy, session=session,  # type: ignore[arg-type]
                             desc="tiles (worker)")
    finally:
        if session is not None:
            session.close()
    return DownloadedBatch(report=report, tiles=memory.tiles)


def batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """``items`` cut into consecutive runs of at most ``size``."""
    return [items[start:start + size] for start in range(0, len(items), max(1, int(size)))]


def fetch_tiles_distributed(client: Any, source: Any, tiles: Iterable[tuple[int, int, int]], cache: Any, *,
                            policy: Any = None, limit: GlobalRateLimit | None = None,
                            tiles_per_task: int = TILES_PER_TASK, threads_per_task: int = THREADS_PER_TASK,
                            desc: str = "tiles", on_batch: Callable[[Any], None] | None = None) -> Any:
    """Download every tile of ``tiles`` missing from ``cache`` on the cluster; the client writes the
    cache. Returns one merged :class:`~soundmap.tiles.fetch.FetchReport`, like ``fetch_tiles``."""
    from distributed import as_completed

    from ..tiles.fetch import FetchReport

    if not source.is_remote:
        raise ValueError(f"source {source.name!r} is a local raster; there is nothing to fetch")
    wanted = list(dict.fromkeys((int(z), int(x), int(y)) for z, x, y in tiles))
    todo = cache.missing(source.cache_key, wanted)
    report = FetchReport(source_name=source.name, requested=len(wanted), cached=len(wanted) - len(todo))
    if not todo:
        return report
    source.api_key()  # a missing API key fails here, once, before any task runs
    limit = limit or GlobalRateLimit.create()
    run = uuid.uuid4().hex[:12]
    futures = [client.submit(download_batch, source, list(batch), policy=policy, limit=limit, threads=threads_per_task,
                             pure=False, key=f"soundmap-fetch-{run}-{i}")
               for i, batch in enumerate(batches(todo, tiles_per_task))]
    bar = progress(total=len(todo), desc=desc, unit="tile")
    try:
        for future in as_completed(futures):
            done: DownloadedBatch = future.result()
            cache.put_many(source.cache_key, done.tiles)
            report.downloaded += done.report.downloaded
            report.bytes_downloaded += done.report.bytes_downloaded
            report.failed.update(done.report.failed)
            bar.update(done.report.requested)
            if on_batch is not None:
                on_batch(done)
    except BaseException:
        report.interrupted = True
        client.cancel(futures)
        raise
    finally:
        bar.close()
    return report


def fetch_workspace_distributed(workspace: Any, cache: Any, client: Any, plans: list[Any] | None = None, *,
                                policy: Any = None, max_concurrent: int = 16, max_per_second: float | None = None,
                                tiles_per_task: int = TILES_PER_TASK) -> Any:
    """:func:`soundmap.pipeline.workspace.fetch_workspace` on a cluster: same reports and lacking-cell masks.

    ``max_concurrent`` / ``max_per_second`` bound the requests of the whole cluster together.
    """
    import numpy as np

    from ..pipeline.workspace import WorkspaceFetch, cells_lacking_imagery, plan_zoom

    source = workspace.source()
    plans = plans if plans is not None else [plan_zoom(workspace, z) for z in workspace.zooms]
    limit = GlobalRateLimit.create(max_concurrent, max_per_second)
    reports: dict[int, Any] = {}
    lacking: dict[int, np.ndarray] = {}
    for plan in plans:
        grid = workspace.grid(plan.zoom)
        lacking[plan.zoom] = np.zeros((grid.rows, grid.cols), dtype=bool)
        if not source.is_remote:
            continue
        reports[plan.zoom] = fetch_tiles_distributed(client, source, plan.tiles, cache, policy=policy, limit=limit,
                                                     tiles_per_task=tiles_per_task,
                                                     desc=f"zoom {plan.zoom} tiles (z{plan.web_zoom})")
        if cache.missing(source.cache_key, plan.tiles):
            lacking[plan.zoom] = cells_lacking_imagery(workspace, plan.zoom, cache, plan)
    return WorkspaceFetch(reports=reports, lacking=lacking)


def fetch_on_cluster(spec: Any, workspace: Any, cache: Any, plans: list[Any] | None = None, *,
                     max_concurrent: int = 16, **options: Any) -> Any:
    """``soundmap tiles fetch --scheduler``: connect to ``spec`` and run
    :func:`fetch_workspace_distributed`; ``max_concurrent`` (``--workers``) bounds the requests of
    the whole cluster together, as it bounds one machine's."""
    from .cluster import connect

    with connect(spec) as client:
        return fetch_workspace_distributed(workspace, cache, client, plans, max_concurrent=max_concurrent, **options)


__all__ = ["fetch_on_cluster", "GlobalRateLimit", "LimitedSession", "download_batch", "fetch_tiles_distributed",
           "fetch_workspace_distributed"]
