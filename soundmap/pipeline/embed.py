"""The embed workflow on one machine: render every cell of a workspace's grid, encode it, stream
it into the store. What is done per block is :mod:`soundmap.pipeline.blocks` (the same functions
the Dask executor in :mod:`soundmap.distributed.embed` runs); this module schedules them.

Shape of the loop, and why:

- The grid is walked in chunk-aligned blocks (a block = one Zarr chunk of cells), so the region
  is never held in memory and every write replaces whole chunks (cheap, and atomic on disk).
- Background threads render groups of cells (tile decoding + warping release the GIL; each tile is
  decoded once per group) while the model runs on earlier ones; a bounded queue of ``workers + 1``
  groups keeps memory flat. On CUDA a rendered group is pinned in the worker and copied with
  ``non_blocking``.
- After every batch the touched block is written (features, then states): Ctrl-C or a crash loses
  at most the batch in flight, and a re-run skips every cell already marked embedded.
- On GPU the encoder runs under bf16 (fp16 where bf16 is unsupported) autocast; on CPU it stays
  in fp32 (performance.md: CPU bf16 autocast is ~7x slower on CPUs without bf16 units).
  ``precision="fp32"`` keeps the GPU in fp32 too (the authors' evaluation: exact parity). The
  effective precision is part of the store identity, so fp32 and bf16 features never mix.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CacheError, InputError, TileError
from ..progress import info
from ..progress import progress as progress_bar
from ..store.embeddings import (CHUNK_CELLS, STORAGE_DTYPES, CellState, EmbeddingStore, StoreIdentity, StoreLocation,
                         embedding_store_location, is_store_url)
from .blocks import (CellGroup, block_cells, block_groups, default_batch_size, encode_block, make_renderer,
                     open_store, pending_blocks, render_group_size, state_bands)
from .models import model_on_device, resolve_device, resolve_model

def default_workers(device: Any) -> int:
    """Render threads: on CPU the renderer competes with the encoder for the same cores, and
    ~25 ms of rendering per ~500 CPU-ms of ViT-B forward needs little help; on a GPU rendering is
    the bottleneck, so use every core but one (the one feeding the GPU)."""
    cpus = os.cpu_count() or 1
    if getattr(device, "type", str(device)) == "cuda":
        return max(1, cpus - 1)
    return max(1, min(2, cpus))


@dataclass
class EmbedReport:
    """What one ``embed_region`` run did at one zoom level."""

    zoom: int
    store_path: StoreLocation
    total_cells: int          #: cells in the grid
    embedded: int = 0         #: cells embedded by this run
    already_done: int = 0     #: cells found embedded by an earlier run (skipped)
    missing: int = 0          #: cells left without imagery (tiles absent); retried by the next run
    outside: int = 0          #: cells outside the AOI (never embedded)
    batches: int = 0          #: forward passes run
    seconds: float = 0.0
    model_name: str = ""
    device: str = ""

    @property
    def cells_per_s(self) -> float:
        """Throughput of this run (embedded cells per wall-clock second)."""
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    @property
    def complete(self) -> bool:
        """True when every cell inside the region has features."""
        return self.missing == 0

    def summary(self) -> str:
        """One human line."""
        text = (f"zoom {self.zoom}: embedded {self.embedded} cells in {self.seconds:.1f} s "
                f"({self.cells_per_s:.1f} cells/s, {self.model_name} on {self.device})")
        if self.already_done:
            text += f", {self.already_done} already done"
        if self.missing:
            text += f", {self.missing} without imagery"
        return text


@dataclass
class CellCounts:
    """What the state array says before a run: cells to embed, already embedded, outside the AOI."""

    todo: int = 0
    already_done: int = 0
    outside: int = 0


# --------------------------------------------------------------------------- devices and models

def store_identity(model: Any, source: Any, grid: Any, zoom: int) -> StoreIdentity:
    """What the features depend on: the model's weights and preprocessing, the imagery, the grid."""
    return StoreIdentity(model_name=str(model.name), weights_sha256=str(model.weights_sha256),
                         preprocess_version=str(model.preprocess_version), model_family=str(model.family),
                         source_name=str(source.name), source_key=str(source.cache_key), zoom=int(zoom),
                         grid=grid.to_dict(), precision=str(getattr(model, "image_precision", "fp32")))


# --------------------------------------------------------------------------- planning

def count_cells(store: EmbeddingStore, inside: np.ndarray | None) -> CellCounts:
    """Count the cells to embed and those done, marking PENDING cells outside the AOI as OUTSIDE
    on the way (states only: no features involved, so no ordering concern)."""
    counts = CellCounts()
    for band_rows, band, band_inside in state_bands(store, inside):
        newly_outside = ~band_inside & (band == CellState.PENDING)
        if newly_outside.any():
            band = np.where(newly_outside, np.uint8(CellState.OUTSIDE), band).astype(np.uint8)
            store.state[band_rows, :] = band
        done = band == CellState.EMBEDDED
        counts.already_done += int(done.sum())
        counts.outside += int((~band_inside).sum())
        counts.todo += int((band_inside & ~done).sum())
    return counts


def quick_start(groups: Iterable[CellGroup], batch_size: int) -> Iterator[CellGroup]:
    """``groups`` with the first one cut into single model batches (the rest unchanged).

    Why: the encoder cannot start before the first render group is rendered, by one thread, and a
    group is at least ``MIN_RENDER_GROUP`` cells (~64 × 35 ms of CPU on the project's machines).
    Cut small, the encoder starts after one batch, and the render threads are ahead of it from
    then on. Profiled on CPU (bench/RESULTS.md): 12 % of a small embed run was this wait.
    """
    iterator = iter(groups)
    first = next(iterator, None)
    if first is None:
        return
    n = len(first.rows)
    for start in range(0, n, batch_size):
        stop = start + batch_size
        yield CellGroup(block=first.block, rows=first.rows[start:stop], cols=first.cols[start:stop],
                        last_in_block=first.last_in_block and stop >= n)
    yield from iterator


# --------------------------------------------------------------------------- rendering

def prefetched(executor: ThreadPoolExecutor, fn: Callable[[Any], Any], items: Iterable[Any],
               depth: int) -> Iterator[Any]:
    """``map(fn, items)`` run ahead by up to ``depth`` items on ``executor``, results in order.

    Bounded so memory stays flat however long the region; pending work is cancelled when the
    consumer stops early (Ctrl-C, error).
    """
    pending: deque[Future[Any]] = deque()
    source = iter(items)
    try:
        for item in source:
            pending.append(executor.submit(fn, item))
            if len(pending) >= depth:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(source, None)
            if nxt is not None:
                pending.append(executor.submit(fn, nxt))
            yield result
    finally:
        for future in pending:
            future.cancel()


# --------------------------------------------------------------------------- the loop

def _as_workspace(workspace: Any) -> Any:
    from .workspace import Workspace

    if isinstance(workspace, Workspace):
        return workspace
    return Workspace.load(workspace)


def check_tiles_fetched(workspace: Any, zoom: int, cache: Any) -> None:
    """TileError (one line) when not one tile of the zoom's plan is cached: embed before fetch."""
    from .workspace import plan_zoom

    source = workspace.source()
    if not source.is_remote:
        return
    plan = plan_zoom(workspace, zoom)
    if plan.tiles and cache.count(source.cache_key, plan.web_zoom) == 0:
        raise TileError(f"no tiles of {source.name} are cached for zoom {zoom}; run "
                        f"`soundmap tiles fetch --workspace {workspace.path} --zoom {zoom}` first")


def check_embed_options(*, batch_size: int | None = None, workers: int | None = None,
                        dtype: str = "float16", precision: str | None = None) -> None:
    """One-line InputErrors for option values no run can use (before any model is loaded)."""
    if precision is not None:
        from ..models.soundscape import check_precision

        check_precision(precision)
    if batch_size is not None and batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    if dtype not in STORAGE_DTYPES:
        raise InputError(f"--dtype must be float16 or float32, got {dtype!r}")


def prepare_embedding(workspace: Any, zooms: Iterable[int], model: Any = None, *, device: str | Any = "auto",
                      cache_dir: str | os.PathLike | None = None) -> Any:
    """Check every zoom can be embedded (grid recorded, tiles fetched) *before* loading the model,
    then load it once: a bad zoom costs no model load, and all zooms share one model."""
    ws = _as_workspace(workspace)
    cache = ws.tile_cache(cache_dir)
    for zoom in zooms:
        ws.grid(zoom)
        check_tiles_fetched(ws, zoom, cache)
    source = ws.source()
    loaded = resolve_model(model, family=source.family, device=resolve_device(device), cache_dir=cache_dir)
    if str(loaded.family).lower() != str(source.family).lower():
        info(f"warning: model {loaded.name} was trained on {loaded.family} imagery but the workspace's "
             f"source {source.name} is {source.family}")
    return loaded


def embed_region(workspace: Any, zoom: int, model: Any = None, *, batch_size: int | None = None,
                 device: str | Any = "auto", workers: int | None = None, progress: bool = True,
                 overwrite: bool = False, dtype: str = "float16", cache_dir: str | os.PathLike | None = None,
                 chunk_cells: int = CHUNK_CELLS, on_batch: Callable[[EmbedReport], None] | None = None,
                 precision: str | None = None, store_url: str | None = None) -> EmbedReport:
    """Embed every cell of ``workspace``'s grid at ``zoom`` into its embedding store.

    The store is in the workspace directory, or under the workspace's store URL (``store_url``,
    else ``$SOUNDMAP_STORE_URL``, else the one recorded in the workspace: see
    :func:`~soundmap.store.embeddings.embedding_store_location`).
    ``workspace`` is a :class:`~soundmap.pipeline.workspace.Workspace` or its directory; ``model`` a loaded
    model, a model name/path, or None for the installed PSM model of the source's family.
    Resumes an existing store made with the same model, source, preprocessing and grid; refuses
    (CacheError) one made differently unless ``overwrite``. Cells without imagery are marked and
    counted in the report (``report.missing``), not raised: the caller decides. ``chunk_cells``
    sets the chunk side of a *new* store. ``on_batch`` is called after each batch is written
    (progress hooks, tests). ``precision`` (``auto`` | ``fp32``) is set on the model (None keeps
    the model's own, ``auto`` by default); the effective one (bf16 or fp32) is recorded in the store.
    """
    check_embed_options(batch_size=batch_size, workers=workers, dtype=dtype, precision=precision)
    ws = _as_workspace(workspace)
    grid = ws.grid(zoom)
    source = ws.source()
    cache = ws.tile_cache(cache_dir)
    check_tiles_fetched(ws, zoom, cache)
    target = resolve_device(device)
    model = resolve_model(model, family=source.family, device=target, cache_dir=cache_dir)
    target = model_on_device(model, target)
    if precision is not None and hasattr(model, "set_precision"):
        model.set_precision(precision)
    batch_size = int(batch_size if batch_size is not None else default_batch_size(target.type))

    job = _EmbedJob(workspace=ws, zoom=zoom, model=model, grid=grid, source=source, cache=cache, device=target,
                    batch_size=batch_size, workers=int(workers or default_workers(target)))
    path = embedding_store_location(ws, zoom, store_url)
    with store_lock(path):
        store = open_store(path, job.identity, model, grid, zoom, device=target, dtype=dtype, overwrite=overwrite,
                           chunk_cells=chunk_cells)
        return _embed_into(store, job, progress, on_batch)


@dataclass(frozen=True)
class _EmbedJob:
    """Everything one zoom level's embed run works with, resolved and checked."""

    workspace: Any
    zoom: int
    model: Any
    grid: Any
    source: Any
    cache: Any
    device: Any
    batch_size: int
    workers: int

    @property
    def identity(self) -> StoreIdentity:
        return store_identity(self.model, self.source, self.grid, self.zoom)


def _embed_into(store: EmbeddingStore, job: _EmbedJob, progress: bool,
                on_batch: Callable[[EmbedReport], None] | None) -> EmbedReport:
    """Plan the remaining cells, render them in the background and encode them into ``store``."""
    inside = job.workspace.aoi_mask(job.zoom)
    counts = count_cells(store, inside)
    report = EmbedReport(zoom=job.zoom, store_path=store.path, total_cells=job.grid.rows * job.grid.cols,
                         already_done=counts.already_done, outside=counts.outside,
                         model_name=str(job.model.name), device=str(job.device))
    renderer = make_renderer(job.grid, job.source, job.cache, pin_memory=job.device.type == "cuda", device=job.device)
    started = time.perf_counter()
    bar = progress_bar(total=counts.todo, desc=f"embed zoom {job.zoom}", unit="cell") if progress else _NullBar()
    executor = ThreadPoolExecutor(max_workers=job.workers, thread_name_prefix="soundmap-render")

    def batch_done(n_valid: int, n_missing: int) -> None:
        report.embedded += n_valid
        report.missing += n_missing
        report.batches += bool(n_valid)
        report.seconds = time.perf_counter() - started
        bar.update(n_valid + n_missing)
        if on_batch is not None:
            on_batch(report)

    try:
        planned = _planned_groups(store, inside, render_group_size(job.batch_size))
        rendered = prefetched(executor, renderer, quick_start(planned, job.batch_size), job.workers + 1)
        for block, block_rendered in itertools.groupby(rendered, key=lambda item: _block_key(item.group)):
            encode_block(store, _block_slices(block), block_rendered, model=job.model, zoom=job.zoom,
                         device=job.device, batch_size=job.batch_size, flush_every_batch=True, on_batch=batch_done)
    finally:
        report.seconds = time.perf_counter() - started
        executor.shutdown(wait=False, cancel_futures=True)
        bar.close()
    return report


def _planned_groups(store: EmbeddingStore, inside: np.ndarray | None, group_size: int) -> Iterator[CellGroup]:
    """Render groups of every pending block, lazily (each block's cells read when reached)."""
    for todo in pending_blocks(store, inside):
        cell_rows, cell_cols, _ = block_cells(store, todo)
        yield from block_groups(todo, cell_rows, cell_cols, group_size)


def _block_key(group: CellGroup) -> tuple[int, int, int, int]:
    rows, cols = group.block
    return (rows.start, rows.stop, cols.start, cols.stop)


def _block_slices(key: tuple[int, int, int, int]) -> tuple[slice, slice]:
    """The block's slices back from its :func:`_block_key`."""
    return slice(key[0], key[1]), slice(key[2], key[3])


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if needed) for the block.

    Two embed runs writing the same store could interleave a block's features and states and
    leave cells marked valid over another run's features; the second run fails fast instead.
    The OS drops the lock when the process dies, so a crash never leaves a stale lock behind.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; running two embeds at once is on the user
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CacheError(f"another `soundmap embed` is writing {path.with_suffix('')}; wait for it to "
                             "finish or use another --workspace") from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def store_lock(location: StoreLocation) -> contextlib.AbstractContextManager[None]:
    """The lock guarding one store's writers: :func:`exclusive_lock` on a sibling ``.lock`` file
    for a local store; nothing for a store at a URL.

    Why no lock on a URL: a local lock file cannot guard a remote store, and an object-store lock
    (create-if-absent of a ``.lock`` key) is neither atomic on every fsspec backend nor released
    when its holder dies, so a crashed run would leave a stale lock that blocks every later run.
    On a URL the caller is the only writer: one client runs the embed (as the distributed path
    does: its workers write disjoint chunks for that one client). Do not start two ``soundmap
    embed`` runs against the same store URL.
    """
    if is_store_url(location):
        return contextlib.nullcontext()
    path = Path(location)
    return exclusive_lock(path.with_name(path.name + ".lock"))


class _NullBar:
    """Stands in for the progress bar when the caller asked for none."""

    def update(self, n: int = 1) -> None:
        return None

    def close(self) -> None:
        return None
