"""``soundmap embed --scheduler``: the embed loop spread over a Dask cluster, one task per block.

How the work is cut, and why it is safe:

- The tasks run the block function of :mod:`soundmap.pipeline.blocks`, the same code the
  single-machine loop runs (open-or-create with its checks, a block's pending cells, render groups,
  ``batch_size`` batches, features then states); only who runs it differs. The grid is walked in
  the store's chunk-aligned blocks (:func:`~soundmap.pipeline.blocks.pending_blocks`: cells
  already embedded are skipped, cells outside the AOI are marked). One task owns one block, so no
  two tasks ever write the same chunk.
- A task renders its cells from the tile cache (fetching tiles the cache lacks itself, under the
  run's cluster-wide download limit), encodes them with the worker's model (loaded once per worker
  process, :func:`~soundmap.distributed.cluster.worker_model`) in the batch size a single machine
  with the encoders' device type uses, and writes its block **once, at the end**: features first,
  then the states that vouch for them. A worker that dies mid-block
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

from ..errors import InputError, ModelError, TileError
from ..pipeline.blocks import (BlockResult, BlockTodo, RenderedGroup, block_cells, block_groups, default_batch_size,
                               encode_block as encode_groups, make_renderer, open_store, pending_blocks,
                               render_group_size, worker_name)
from ..pipeline.embed import EmbedReport, check_embed_options, count_cells, store_identity, store_lock
from ..progress import progress as progress_bar
from ..store.embeddings import CHUNK_CELLS, EmbeddingStore, embedding_store_location
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


@dataclass
class RenderedBlock:
    """A block's cells rendered (the hand-over between render and encode tasks)."""

    rows: slice
    cols: slice
    groups: list[RenderedGroup]
    skipped: int = 0


# --------------------------------------------------------------------------- tasks (run on workers)

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


def render_block(job: EmbedJob, todo: BlockTodo, device: Any = None) -> RenderedBlock:
    """Task: render the block's cells still to embed (fetching missing tiles first), on ``device``
    (the encoder's, when one task renders and encodes; else this worker's CPU)."""
    store = EmbeddingStore.open(job.store_path)
    cell_rows, cell_cols, skipped = block_cells(store, todo)
    if job.fetch_missing:
        _fetch_missing_tiles(job, cell_rows, cell_cols)
    render = make_renderer(job.grid, job.source, job.cache, device=device)
    groups = [render(group) for group in block_groups(todo, cell_rows, cell_cols, render_group_size(job.batch_size))]
    return RenderedBlock(rows=todo.rows, cols=todo.cols, groups=groups, skipped=skipped)


def encode_block(job: EmbedJob, rendered: RenderedBlock) -> BlockResult:
    """Task: encode a rendered block with this worker's model and write it (features, then states)."""
    import torch

    started = time.perf_counter()
    if not rendered.groups:
        return BlockResult(block=(rendered.rows.start, rendered.cols.start), skipped=rendered.skipped,
                           worker=worker_name())
    model = worker_model(job.model)
    _check_precision(model, job)
    store = EmbeddingStore.open(job.store_path, writable=True)
    result = encode_groups(store, (rendered.rows, rendered.cols), rendered.groups, model=model, zoom=job.zoom,
                           device=torch.device(model.device), batch_size=job.batch_size, flush_every_batch=False)
    result.skipped, result.worker = rendered.skipped, worker_name()
    result.seconds = time.perf_counter() - started
    return result


def _check_precision(model: Any, job: EmbedJob) -> None:
    """Set the run's precision on this worker's model, and refuse to write features computed in
    another precision than the store records (a CPU worker in a run planned for GPU workers)."""
    if hasattr(model, "set_precision"):
        model.set_precision(job.precision)
    computed = str(getattr(model, "image_precision", "fp32"))
    if computed != job.image_precision:
        raise ModelError(f"worker {worker_name()} encodes in {computed}, but this run writes {job.image_precision} "
                         "features; pass --resources GPU=1 so that only GPU workers encode, or --precision fp32")


def embed_block(job: EmbedJob, todo: BlockTodo) -> BlockResult:
    """Task: render, encode and write one block on one worker (no image crosses the network)."""
    started = time.perf_counter()
    device = worker_model(job.model).device  # render straight onto the encoder's device
    result = encode_block(job, render_block(job, todo, device))
    result.seconds = time.perf_counter() - started
    return result


class _NoBar:
    """Stands in for the progress bar when the caller asked for none."""

    def update(self, n: int = 1) -> None:
        return None

    def close(self) -> None:
        return None


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


def encoder_device_type(client: Any, device: str, resources: dict[str, float] | None) -> str:
    """``cuda`` or ``cpu``: what the encoding workers run on (``auto``: asked of the workers).

    It sets the batch size (as on one machine) and, under ``auto`` precision, bf16 or fp32; a mix
    of GPU and CPU encoders would write features of two precisions into one store, which is
    refused (InputError) before anything runs.
    """
    text = str(device).lower()
    if text in ("cpu", "cuda") or text.startswith("cuda:"):
        return "cpu" if text == "cpu" else "cuda"
    workers = encoder_workers(client, resources)
    if not workers:
        raise InputError("no worker of the cluster has the --resources the encoder tasks need; start workers "
                         "with `dask worker --resources GPU=1` or drop --resources")
    kinds = set(client.run(_has_cuda, workers=workers).values())
    if len(kinds) > 1:
        raise InputError("some workers have a GPU and some do not; pass --resources GPU=1 (GPU workers encode, "
                         "the others render) or --device cpu")
    return "cuda" if kinds == {True} else "cpu"


def encoder_precision(device_type: str, precision: str) -> str:
    """What the encoding workers compute in (``fp32`` or ``bf16``), recorded in the store:
    ``auto`` is bf16 on CUDA, fp32 on CPU (as on one machine)."""
    return "bf16" if device_type == "cuda" and precision != "fp32" else "fp32"


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
                             progress: bool = True, precision: str | None = None, store_url: str | None = None,
                             on_block: Callable[[BlockResult], None] | None = None) -> EmbedReport:
    """:func:`soundmap.pipeline.embed.embed_region` on a Dask cluster (``client``): same store, same values.

    ``device`` is resolved on each worker (``auto``: its GPU when it has one). ``model`` is a name,
    a model directory, or a loaded model (saved under the workspace for the workers when it has no
    installed directory). The workspace, its store and the model directory must be at the same
    path on every worker (a shared filesystem); the tile cache too, unless every tile is cached on
    each worker's own copy. ``on_block`` is called with each block's :class:`BlockResult` as it
    arrives (progress hooks, tests). ``batch_size`` defaults to a single machine's for the encoder
    workers' device type (8 on CPU, 128 on CUDA), so both executors write bit-identical features.
    ``store_url`` as for :func:`~soundmap.pipeline.embed.embed_region` (every worker must reach it).
    """
    from ..pipeline.workspace import Workspace

    check_embed_options(batch_size=batch_size, dtype=dtype, precision=precision)
    ws = workspace if isinstance(workspace, Workspace) else Workspace.load(workspace)
    grid, source = ws.grid(zoom), ws.source()
    directory, local = _model_on_client(model, source.family, cache_dir, spill_dir=Path(ws.path) / MODEL_SPILL_DIR)
    cache = ws.tile_cache(cache_dir) if source.is_remote else None
    path = embedding_store_location(ws, zoom, store_url)
    limit = GlobalRateLimit.create(max_concurrent_downloads, max_downloads_per_second)
    setting = str(precision or getattr(local, "precision", "auto") or "auto")
    device_type = encoder_device_type(client, device, resources)
    computed = encoder_precision(device_type, setting)
    job_batch = int(batch_size if batch_size is not None else default_batch_size(device_type))
    with store_lock(path):
        identity = replace(store_identity(local, source, grid, zoom), precision=computed)
        store = open_store(path, identity, local, grid, zoom, device=getattr(local, "device", None), dtype=dtype,
                           overwrite=overwrite, chunk_cells=chunk_cells)
        inside = ws.aoi_mask(zoom)
        counts = count_cells(store, inside)
        report = EmbedReport(zoom=zoom, store_path=store.path, total_cells=grid.rows * grid.cols,
                             already_done=counts.already_done, outside=counts.outside, model_name=str(local.name),
                             device=f"cluster ({device})")
        job = EmbedJob(store_path=str(store.path), zoom=int(zoom), grid=grid, source=source, cache=cache,
                       model=ModelRef(str(directory), str(local.weights_sha256), str(device)),
                       batch_size=job_batch, fetch_missing=fetch_missing, limit=limit, precision=setting,
                       image_precision=computed)
        todos = pending_blocks(store, inside)
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


__all__ = ["embed_on_cluster", "EmbedJob", "embed_block", "embed_region_distributed", "encode_block",
           "render_block"]
