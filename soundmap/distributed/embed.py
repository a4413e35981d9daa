"""``soundmap embed --scheduler``: the embed loop spread over a Dask cluster, one task per block.

How the work is cut, and why it is safe:

- The grid is walked in the store's chunk-aligned blocks (one Zarr chunk of cells each), exactly
  as the single-machine loop plans them (:func:`~soundmap.pipeline.embed.plan_groups`: cells
  already embedded are skipped, cells outside the AOI are marked). One task owns one block, so no
  two tasks ever write the same chunk.
- A task renders its cells from the tile cache (fetching tiles the cache lacks itself, under the
  run's cluster-wide download limit), encodes them with the worker's model (loaded once per worker
  process, :func:`~soundmap.distributed.cluster.worker_model`), and writes its block **once, at
  the end**: features first, then the states that vouch for them. A worker that dies mid-block
  therefore leaves that block's cells PENDING (never garbage marked valid); Dask re-runs the task
  on another worker. A re-run first re-reads the block and skips cells already embedded, so a
  worker dying *after* its write costs nothing twice either.
- With ``resources`` (``--resources GPU=1``) a block is two tasks: rendering (any worker) and
  encoding + writing (only workers that declared the resources), so CPU-only workers render and
  GPU workers encode.
- The client holds the store's lock for the whole run (a second embed of the same store fails
  fast) and is the only one that creates or resumes the store.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, TileError
from ..progress import progress as progress_bar
from ..store.embeddings import CHUNK_CELLS, CellState, EmbeddingStore, embedding_store_location, store_exists
from ..pipeline.embed import (EmbedReport, check_embed_options, count_cells, encode_batch, store_lock,
                              feature_dim, iter_groups, render_group_size, store_identity)
from .cluster import ModelRef, model_directory, worker_model
from .fetch import GlobalRateLimit

MODEL_SPILL_DIR = ".cluster-models"
"""Workspace sub-directory where a model given only in memory is saved for the workers to load."""


@dataclass(frozen=True)
class EmbedJob:
    """What every block task needs, small and picklable (paths, grid, source; never the model)."""

    store_path: str
    zoom: int
    grid: Any
    source: Any
    cache: Any            #: TileCache (pickles as its path) or None for a raster source
    model: ModelRef
    batch_size: int
    fetch_missing: bool = True
    limit: GlobalRateLimit | None = None
    precision: str = "auto"         #: the model's precision setting (``auto`` | ``fp32``)
    image_precision: str = "fp32"   #: what every encoding worker must compute in (the store records it)


@dataclass(frozen=True)
class BlockTodo:
    """One block a task embeds: its slices, the AOI mask inside it (None: all of it) and how many
    cells the plan expected to embed there. Cells are found by the task from the block's states,
    so the client never holds per-cell lists of a continental grid."""

    rows: slice
    cols: slice
    inside: np.ndarray | None
    planned: int


@dataclass
class BlockResult:
    """What one block task did (the client sums these into the :class:`EmbedReport`)."""

    block: tuple[int, int]
    embedded: int = 0
    missing: int = 0
    skipped: int = 0      #: cells found embedded already (a re-run of a task whose write landed)
    batches: int = 0
    seconds: float = 0.0
    worker: str = ""


@dataclass
class RenderedBlock:
    """A block's cells rendered (the hand-over between render and encode tasks)."""

    rows: slice
    cols: slice
    cell_rows: np.ndarray
    cell_cols: np.ndarray
    images: np.ndarray    #: n_valid × H × W × 3 uint8, valid cells only, in cell order
    valid: np.ndarray     #: bool per cell
    skipped: int = 0


# --------------------------------------------------------------------------- tasks (run on workers)

def _cells_to_do(store: EmbeddingStore, todo: BlockTodo) -> tuple[np.ndarray, np.ndarray, int]:
    """The block's cells still to embed, row-major (the single-machine loop's order): not
    EMBEDDED and inside the AOI. A retried task thus skips whatever its earlier attempt wrote; the
    third value counts those (planned cells found done)."""
    state = np.asarray(store.state[todo.rows, todo.cols])
    pending = state != CellState.EMBEDDED
    if todo.inside is not None:
        pending &= todo.inside
    local_r, local_c = np.nonzero(pending)
    return local_r + todo.rows.start, local_c + todo.cols.start, max(0, todo.planned - len(local_r))


def _fetch_missing_tiles(job: EmbedJob, cell_rows: np.ndarray, cell_cols: np.ndarray) -> None:
    """Download the tiles these cells need that the cache lacks (cells still lacking imagery
    afterwards are marked NO_IMAGERY by the caller, as on one machine)."""
    from ..geo.tileplan import tiles_for_grid
    from ..tiles.fetch import fetch_tiles

    if job.cache is None or not job.source.is_remote or not len(cell_rows):
        return
    z, xy = tiles_for_grid(job.grid, job.source, rows=cell_rows, cols=cell_cols)
    if z is None:
        return
    wanted = sorted((int(z), int(x), int(y)) for x, y in xy)
    missing = job.cache.missing(job.source.cache_key, wanted)
    if not missing:
        return
    session = job.limit.session(4) if job.limit is not None else None
    try:
        fetch_tiles(job.source, missing, job.cache, workers=4, session=session, desc="tiles (worker)")
    except TileError:
        pass  # the host refuses us: the cells are marked without imagery and retried by the next run
    finally:
        if session is not None:
            session.close()


def render_block(job: EmbedJob, todo: BlockTodo) -> RenderedBlock:
    """Task: render the block's cells still to embed (fetching missing tiles first)."""
    from ..tiles.render import render_cells

    store = EmbeddingStore.open(job.store_path)
    rows, cols = todo.rows, todo.cols
    todo_r, todo_c, skipped = _cells_to_do(store, todo)
    if job.fetch_missing:
        _fetch_missing_tiles(job, todo_r, todo_c)
    images, valids = [], []
    group = render_group_size(job.batch_size)
    for start in range(0, len(todo_r), group):
        pixels, valid = render_cells(job.grid, todo_r[start:start + group], todo_c[start:start + group],
                                     job.source, job.cache)
        valid = np.asarray(valid, dtype=bool)
        images.append(pixels[valid])
        valids.append(valid)
    size = job.grid.tile_px
    return RenderedBlock(rows=rows, cols=cols, cell_rows=todo_r, cell_cols=todo_c,
                         images=np.concatenate(images) if images else np.zeros((0, size, size, 3), np.uint8),
                         valid=np.concatenate(valids) if valids else np.zeros(0, bool), skipped=skipped)


def encode_block(job: EmbedJob, rendered: RenderedBlock) -> BlockResult:
    """Task: encode a rendered block with this worker's model and write it (features, then states)."""
    import torch

    started = time.perf_counter()
    rows, cols = rendered.rows, rendered.cols
    result = BlockResult(block=(rows.start, cols.start), skipped=rendered.skipped, worker=_worker_name())
    if not len(rendered.cell_rows):
        return result
    model = worker_model(job.model)
    _check_precision(model, job)
    device = torch.device(model.device)
    store = EmbeddingStore.open(job.store_path, writable=True)
    features, state = (np.array(a) for a in store.read_block(rows, cols))
    local_r, local_c = rendered.cell_rows - rows.start, rendered.cell_cols - cols.start
    valid = rendered.valid
    images = torch.from_numpy(np.ascontiguousarray(rendered.images))
    first_image = np.cumsum(valid) - valid  # index in ``images`` of each cell's image
    for start in range(0, len(valid), job.batch_size):
        # the same cell batches as the single-machine loop (render groups hold whole batches),
        # so that both make bit-identical features
        cells = slice(start, start + job.batch_size)
        batch_valid = valid[cells]
        if batch_valid.any():
            picks = first_image[cells][batch_valid]
            batch = images[int(picks[0]):int(picks[-1]) + 1]
            features[local_r[cells][batch_valid], local_c[cells][batch_valid]] = encode_batch(
                model, batch, job.zoom, device)
            result.batches += 1
    state[local_r, local_c] = np.where(valid, CellState.EMBEDDED, CellState.NO_IMAGERY)
    store.write_block(rows, cols, features if valid.any() else None, state)
    result.embedded = int(valid.sum())
    result.missing = int((~valid).sum())
    result.seconds = time.perf_counter() - started
    return result


def _check_precision(model: Any, job: EmbedJob) -> None:
    """Set the run's precision on this worker's model, and refuse to write features computed in
    another precision than the store records (a CPU worker in a run planned for GPU workers)."""
    if hasattr(model, "set_precision"):
        model.set_precision(job.precision)
    computed = str(getattr(model, "image_precision", "fp32"))
    if computed != job.image_precision:
        from ..errors import ModelError

        raise ModelError(f"worker {_worker_name()} encodes in {computed}, but this run writes {job.image_precision} "
                         "features; pass --resources GPU=1 so that only GPU workers encode, or --precision fp32")


def embed_block(job: EmbedJob, todo: BlockTodo) -> BlockResult:
    """Task: render, encode and write one block on one worker (no image crosses the network)."""
    started = time.perf_counter()
    result = encode_block(job, render_block(job, todo))
    result.seconds = time.perf_counter() - started
    return result


class _NoBar:
    """Stands in for the progress bar when the caller asked for none."""

    def update(self, n: int = 1) -> None:
        return None

    def close(self) -> None:
        return None


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except ValueError:
        return f"pid {os.getpid()}"


# --------------------------------------------------------------------------- the client side

@dataclass(frozen=True)
class ModelFacts:
    """What the client needs of a model (store identity, feature width) without its weights: the
    client may be a laptop driving GPU workers, and loading ViT-B there costs seconds and memory."""

    name: str
    weights_sha256: str
    preprocess_version: str
    family: str
    config: Any

    @classmethod
    def read(cls, directory: Path) -> ModelFacts:
        from ..models.soundscape import read_config

        config, sha = read_config(directory)
        return cls(name=str(config.name or directory.name), weights_sha256=sha,
                   preprocess_version=str(config.preprocess_version), family=str(config.family), config=config)


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def encoder_workers(client: Any, resources: dict[str, float] | None) -> list[str]:
    """Addresses of the workers that may run encoder tasks (those holding ``resources``)."""
    workers = client.scheduler_info()["workers"]
    return [address for address, info in workers.items()
            if all(float(info.get("resources", {}).get(k, 0)) >= v for k, v in (resources or {}).items())]


def encoder_precision(client: Any, device: str, precision: str, resources: dict[str, float] | None) -> str:
    """What the encoding workers will compute in (``fp32`` or ``bf16``), recorded in the store.

    ``auto`` means bf16 on CUDA, fp32 on CPU (as on one machine), so it depends on the workers:
    a mix of GPU and CPU encoders would write features of two precisions into one store, which is
    refused (InputError) before anything runs.
    """
    if precision == "fp32" or str(device).lower() == "cpu":
        return "fp32"
    if str(device).lower().startswith("cuda"):
        return "bf16"
    workers = encoder_workers(client, resources)
    if not workers:
        raise InputError("no worker of the cluster has the --resources the encoder tasks need; start workers "
                         "with `dask worker --resources GPU=1` or drop --resources")
    kinds = set(client.run(_has_cuda, workers=workers).values())
    if len(kinds) > 1:
        raise InputError("some workers have a GPU and some do not; pass --resources GPU=1 (GPU workers encode, "
                         "the others render) or --precision fp32 or --device cpu")
    return "bf16" if kinds == {True} else "fp32"


def _model_on_client(model: Any, family: str, cache_dir: str | os.PathLike | None,
                     spill_dir: Path) -> tuple[Path, Any]:
    """(directory the workers load, the model or its facts for the client). A model given in
    memory is used as is (and saved for the workers when it has no installed directory)."""
    if model is not None and hasattr(model, "encode_image"):
        return model_directory(model, cache_dir=cache_dir, spill_dir=spill_dir), model
    if model is None:
        from ..pipeline.models import default_model_name

        model = default_model_name(family, cache_dir=cache_dir)
    directory = model_directory(model, cache_dir=cache_dir)
    return directory, ModelFacts.read(directory)


def _open_or_create(path: Path | str, identity: Any, model: Any, grid: Any, zoom: int, dtype: str, overwrite: bool,
                    chunk_cells: int) -> EmbeddingStore:
    """The store to fill: resumed when made the same way, created when absent or ``overwrite``."""
    exists = store_exists(path) if isinstance(path, str) else path.exists()
    if exists and not overwrite:
        store = EmbeddingStore.open(path, writable=True)
        store.require_identity(identity)
        return store
    dim = feature_dim(model, grid, zoom, getattr(model, "device", None))
    return EmbeddingStore.create(path, identity, rows=grid.rows, cols=grid.cols, feature_dim=dim, dtype=dtype,
                                 chunk_cells=chunk_cells)


def pending_blocks(store: EmbeddingStore, inside: np.ndarray | None, group_size: int) -> Iterator[BlockTodo]:
    """The blocks with cells still to embed, lazily and row-major, from the single-machine planner."""
    planned = 0
    for group in iter_groups(store, inside, group_size):
        planned += len(group.rows)
        if group.last_in_block:
            rows, cols = group.block
            yield BlockTodo(rows=rows, cols=cols, inside=None if inside is None else inside[rows, cols].copy(),
                            planned=planned)
            planned = 0


def submit_block(client: Any, job: EmbedJob, todo: BlockTodo, *, resources: dict[str, float] | None, retries: int,
                 run_id: str) -> Any:
    """The future of one block: ``embed_block``, or render → encode when encoders need ``resources``."""
    name = f"{run_id}-{todo.rows.start}-{todo.cols.start}"
    if not resources:
        return client.submit(embed_block, job, todo, key=f"soundmap-embed-{name}", retries=retries, pure=False)
    rendered = client.submit(render_block, job, todo, key=f"soundmap-render-{name}", retries=retries, pure=False)
    return client.submit(encode_block, job, rendered, key=f"soundmap-encode-{name}", resources=resources,
                         retries=retries, pure=False)


def in_flight_limit(client: Any) -> int:
    """Blocks submitted ahead of the results: a few per worker thread, so every worker stays busy
    while the client never holds futures (or rendered blocks) for the whole grid."""
    try:
        threads = sum(int(w.get("nthreads", 1)) for w in client.scheduler_info()["workers"].values())
    except Exception:
        threads = 1
    return max(8, 4 * threads)


def embed_region_distributed(workspace: Any, zoom: int, model: Any = None, *, client: Any,
                             batch_size: int | None = None, device: str = "auto", overwrite: bool = False,
                             dtype: str = "float16", cache_dir: str | os.PathLike | None = None,
                             chunk_cells: int = CHUNK_CELLS, resources: dict[str, float] | None = None,
                             fetch_missing: bool = True, max_concurrent_downloads: int = 16,
                             max_downloads_per_second: float | None = None, retries: int = 2,
                             progress: bool = True, precision: str | None = None,
                             on_block: Callable[[BlockResult], None] | None = None) -> EmbedReport:
    """:func:`soundmap.pipeline.embed.embed_region` on a Dask cluster (``client``): same store, same values.

    ``device`` is resolved on each worker (``auto``: its GPU when it has one). ``model`` is a name,
    a model directory, or a loaded model (saved under the workspace for the workers when it has no
    installed directory). The workspace, its store and the model directory must be at the same
    path on every worker (a shared filesystem); the tile cache too, unless every tile is cached on
    each worker's own copy. ``on_block`` is called with each block's :class:`BlockResult` as it
    arrives (progress hooks, tests).
    """
    from ..pipeline.workspace import Workspace

    check_embed_options(batch_size=batch_size, dtype=dtype, precision=precision)
    ws = workspace if isinstance(workspace, Workspace) else Workspace.load(workspace)
    grid, source = ws.grid(zoom), ws.source()
    directory, local = _model_on_client(model, source.family, cache_dir, spill_dir=Path(ws.path) / MODEL_SPILL_DIR)
    cache = ws.tile_cache(cache_dir) if source.is_remote else None
    job_batch = int(batch_size if batch_size is not None else 8)
    path = embedding_store_location(ws, zoom)
    limit = GlobalRateLimit.create(max_concurrent_downloads, max_downloads_per_second)
    setting = str(precision or getattr(local, "precision", "auto") or "auto")
    computed = encoder_precision(client, device, setting, resources)
    with store_lock(path):
        identity = replace(store_identity(local, source, grid, zoom), precision=computed)
        store = _open_or_create(path, identity, local, grid, zoom, dtype, overwrite, chunk_cells)
        inside = ws.aoi_mask(zoom)
        counts = count_cells(store, inside)
        report = EmbedReport(zoom=zoom, store_path=store.path, total_cells=grid.rows * grid.cols,
                             already_done=counts.already_done, outside=counts.outside, model_name=str(local.name),
                             device=f"cluster ({device})")
        job = EmbedJob(store_path=str(store.path), zoom=int(zoom), grid=grid, source=source, cache=cache,
                       model=ModelRef(str(directory), str(local.weights_sha256), str(device)),
                       batch_size=job_batch, fetch_missing=fetch_missing, limit=limit, precision=setting,
                       image_precision=computed)
        todos = pending_blocks(store, inside, render_group_size(job_batch))
        _run_blocks(client, job, todos, counts.todo, report, resources, retries, progress,
                    run_id=str(store.attrs.get("store_id", "store"))[:12], on_block=on_block)
    return report


def _run_blocks(client: Any, job: EmbedJob, todos: Iterator[BlockTodo], total: int, report: EmbedReport,
                resources: dict[str, float] | None, retries: int, progress: bool, run_id: str,
                on_block: Callable[[BlockResult], None] | None = None) -> None:
    """Keep a bounded number of blocks in flight and gather results as they finish (cancelling
    the rest on error or Ctrl-C)."""
    from distributed import as_completed

    started = time.perf_counter()
    run_id = f"{run_id}-{int(time.time() * 1000)}"
    limit = in_flight_limit(client)
    bar = progress_bar(total=total, desc=f"embed zoom {job.zoom} (cluster)", unit="cell") if progress else _NoBar()
    pending = as_completed()
    in_flight: set[Any] = set()

    def collect(future: Any) -> None:
        in_flight.discard(future)
        _collect(future, report, bar, on_block)

    try:
        for todo in todos:
            future = submit_block(client, job, todo, resources=resources, retries=retries, run_id=run_id)
            in_flight.add(future)
            pending.add(future)
            if len(in_flight) >= limit:
                collect(next(pending))
        for future in pending:
            collect(future)
    except BaseException:
        client.cancel(list(in_flight))
        raise
    finally:
        report.seconds = time.perf_counter() - started
        bar.close()


def _collect(future: Any, report: EmbedReport, bar: Any, on_block: Callable[[BlockResult], None] | None) -> None:
    """Add one finished block to the report (re-raising the task's error, if any)."""
    result: BlockResult = future.result()
    report.embedded += result.embedded
    report.missing += result.missing
    report.already_done += result.skipped
    report.batches += result.batches
    bar.update(result.embedded + result.missing + result.skipped)
    if on_block is not None:
        on_block(result)


def embed_on_cluster(spec: Any, workspace: Any, zooms: list[int], model: Any = None, **options: Any) -> Iterator[EmbedReport]:
    """``soundmap embed --scheduler``: connect to ``spec`` (a :class:`~.cluster.SchedulerSpec`;
    ``local:N`` starts N worker processes) and embed each zoom, yielding its report when done.
    The encoder tasks need ``spec.resources``; ``options`` go to :func:`embed_region_distributed`."""
    from .cluster import connect

    with connect(spec) as client:
        for zoom in zooms:
            yield embed_region_distributed(workspace, zoom, model, client=client, resources=dict(spec.resources) or None,
                                           **options)


__all__ = ["embed_on_cluster", "BlockResult", "BlockTodo", "EmbedJob", "pending_blocks", "embed_block", "embed_region_distributed", "encode_block",
           "render_block"]
