"""The embed block function: what one machine and a Dask cluster both run for every store block.

One implementation, two executors (``pipeline/embed.py`` schedules it with render threads ahead
of the encoder; ``distributed/embed.py`` as one task per block). They differ only in who runs
the pieces and when a block is flushed to the store, never in what is computed:

1. :func:`open_store` — open-or-create through :meth:`EmbeddingStore.create_or_resume` (identity
   *and* shape checked before anything is written).
2. :func:`pending_blocks` / :func:`block_cells` — a block's cells still to embed (inside the AOI,
   not EMBEDDED), read from the block's states, row-major. A retried or resumed block thus skips
   what an earlier attempt wrote.
3. :func:`block_groups` + :func:`make_renderer` — render the cells in groups (whole model
   batches; each tile decoded once per group).
4. :func:`encode_block` — encode each group ``batch_size`` cells at a time and write features,
   then the states that vouch for them.

Why the results are bit-identical on both executors: the model batches are the same consecutive
``batch_size`` slices of a block's pending cells (groups hold whole batches), with the same
batch size (:data:`DEFAULT_BATCH_SIZE` of the encoder's device type) and the same precision.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..store.embeddings import CellState, EmbeddingStore, StoreIdentity, StoreLocation

#: Default images per forward pass: small on CPU (no gain from large batches, lower latency per
#: flushed batch), large on GPU (throughput). Both executors use it.
DEFAULT_BATCH_SIZE = {"cpu": 8, "cuda": 128}
#: Cells per render call: the renderer decodes each tile once per call, and neighbouring cells
#: share tiles, so render more cells at a time than a CPU model batch holds.
MIN_RENDER_GROUP = 64


def default_batch_size(device_type: str) -> int:
    """The production batch of a device type (``cpu``/``cuda``; others as CPU)."""
    return DEFAULT_BATCH_SIZE.get(str(device_type), DEFAULT_BATCH_SIZE["cpu"])


def render_group_size(batch_size: int) -> int:
    """Cells per render call: whole model batches, at least ``MIN_RENDER_GROUP`` cells."""
    return batch_size * max(1, -(-MIN_RENDER_GROUP // batch_size))


@dataclass(frozen=True)
class BlockTodo:
    """One block with cells to embed: its slices, the AOI mask inside it (None: all of it) and how
    many cells the plan expected to embed there. The cells themselves are read from the block's
    states when the block runs (:func:`block_cells`), so no per-cell list of a continental grid
    is ever held."""

    rows: slice
    cols: slice
    inside: np.ndarray | None
    planned: int

    @property
    def key(self) -> tuple[int, int]:
        return (self.rows.start, self.cols.start)


@dataclass(frozen=True)
class CellGroup:
    """Cells one render call handles (whole model batches), all in one block, row-major."""

    block: tuple[slice, slice]
    rows: np.ndarray
    cols: np.ndarray
    last_in_block: bool


@dataclass
class RenderedGroup:
    """A :class:`CellGroup` rendered: images of its cells that have imagery, and which those are."""

    group: CellGroup
    images: Any            #: torch uint8 tensor n_valid × H × W × 3 (pinned when feeding CUDA)
    valid: np.ndarray      #: bool, one per cell of the group


@dataclass
class BlockResult:
    """What running one block did."""

    block: tuple[int, int]
    embedded: int = 0
    missing: int = 0
    skipped: int = 0      #: planned cells found embedded already (a re-run of a block whose write landed)
    batches: int = 0
    seconds: float = 0.0
    worker: str = ""


# --------------------------------------------------------------------------- the store

def feature_dim(model: Any, grid: Any, zoom: int, device: Any) -> int:
    """Width D of the model's pre-fusion image feature: the config's ``fc_dim`` (the projector's
    output), else found by encoding one blank cell (for models without that config)."""
    configured = getattr(model, "feature_dim", None)  # a family whose cached feature is not fc_dim wide (Sat2Sound)
    if not isinstance(configured, int):
        configured = getattr(getattr(model, "config", None), "fc_dim", None)
    if isinstance(configured, int) and configured > 0:
        return configured
    import torch

    blank = torch.zeros((1, grid.tile_px, grid.tile_px, 3), dtype=torch.uint8)
    return int(encode_batch(model, blank, zoom, device).shape[-1])


def open_store(path: StoreLocation, identity: StoreIdentity, model: Any, grid: Any, zoom: int, *, device: Any,
               dtype: str, overwrite: bool, chunk_cells: int) -> EmbeddingStore:
    """The store to fill: resumed when made the same way (identity and shape checked), created
    when absent or ``overwrite``; CacheError (one line) when it was made differently."""
    dim = feature_dim(model, grid, zoom, device)
    return EmbeddingStore.create_or_resume(path, identity, rows=grid.rows, cols=grid.cols, feature_dim=dim,
                                           dtype=dtype, overwrite=overwrite, chunk_cells=chunk_cells)


def state_bands(store: EmbeddingStore, inside: np.ndarray | None) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """(row slice, states, inside-AOI mask) one band of chunk rows at a time, so that only a band
    of the grid's states is ever in memory."""
    rows, _ = store.shape
    for r0 in range(0, rows, store.chunk_cells):
        band_rows = slice(r0, min(r0 + store.chunk_cells, rows))
        band = store.read_states(band_rows, slice(None))
        band_inside = inside[band_rows, :] if inside is not None else np.ones(band.shape, dtype=bool)
        yield band_rows, band, band_inside


def pending_blocks(store: EmbeddingStore, inside: np.ndarray | None) -> Iterator[BlockTodo]:
    """The blocks with cells still to embed, lazily and row-major."""
    _, cols = store.shape
    chunk = store.chunk_cells
    for band_rows, band, band_inside in state_bands(store, inside):
        todo = band_inside & (band != CellState.EMBEDDED)
        for c0 in range(0, cols, chunk):
            block_cols = slice(c0, min(c0 + chunk, cols))
            planned = int(todo[:, block_cols].sum())
            if planned:
                mask = None if inside is None else inside[band_rows, block_cols].copy()
                yield BlockTodo(rows=band_rows, cols=block_cols, inside=mask, planned=planned)


def block_cells(store: EmbeddingStore, todo: BlockTodo) -> tuple[np.ndarray, np.ndarray, int]:
    """The block's cells still to embed, row-major (grid rows, grid cols), re-read from its states,
    and how many planned cells were found done meanwhile (a retried task's earlier write)."""
    state = store.read_states(todo.rows, todo.cols)
    pending = state != CellState.EMBEDDED
    if todo.inside is not None:
        pending &= todo.inside
    local_r, local_c = np.nonzero(pending)
    return local_r + todo.rows.start, local_c + todo.cols.start, max(0, todo.planned - len(local_r))


def block_groups(todo: BlockTodo, cell_rows: np.ndarray, cell_cols: np.ndarray, group_size: int) -> Iterator[CellGroup]:
    """The block's cells cut into render groups of ``group_size`` (whole batches) cells."""
    n = len(cell_rows)
    for start in range(0, n, group_size):
        stop = start + group_size
        yield CellGroup(block=(todo.rows, todo.cols), rows=cell_rows[start:stop], cols=cell_cols[start:stop],
                        last_in_block=stop >= n)


# --------------------------------------------------------------------------- render and encode

#: Whether CPU runs render with the block renderer (torch) rather than GDAL per cell: set from
#: bench/embed.py's side-by-side ``render_cpu_ms_per_cell`` (see bench/RESULTS.md). On CUDA the
#: block renderer always runs, on the device, so rendered batches never cross to the host.
BLOCK_RENDER_ON_CPU = True


def uses_block_renderer(source: Any, device: Any) -> bool:
    """Tile sources render with :mod:`soundmap.tiles.block_render` on CUDA (and on CPU when
    :data:`BLOCK_RENDER_ON_CPU`); ``kind: file`` sources always take the GDAL path."""
    if getattr(source, "kind", None) not in ("xyz", "quadkey"):
        return False
    return getattr(device, "type", str(device)) == "cuda" or BLOCK_RENDER_ON_CPU


def make_renderer(grid: Any, source: Any, cache: Any, pin_memory: bool = False,
                  device: Any = None) -> Callable[[CellGroup], RenderedGroup]:
    """The function that renders a group: cells → uint8 images (on ``device`` with the block
    renderer) of the cells that have imagery."""
    import torch

    device = torch.device(device if device is not None else "cpu")
    if uses_block_renderer(source, device):
        from ..tiles.block_render import render_cells_torch

        def render_block(group: CellGroup) -> RenderedGroup:
            images, valid = render_cells_torch(grid, group.rows, group.cols, source, cache, device=device)
            if not valid.all():
                images = images[torch.as_tensor(np.flatnonzero(valid), device=device)]
            return RenderedGroup(group=group, images=images, valid=valid)

        return render_block

    from ..tiles.render import render_cells

    def render(group: CellGroup) -> RenderedGroup:
        pixels, valid = render_cells(grid, group.rows, group.cols, source, cache)
        valid = np.asarray(valid, dtype=bool)
        if not valid.all():
            pixels = pixels[valid]
        images = torch.from_numpy(np.ascontiguousarray(pixels))
        if pin_memory and len(images):
            images = images.pin_memory()
        return RenderedGroup(group=group, images=images, valid=valid)

    return render


def encoder_autocast(device: Any, precision: str = "auto") -> Any:
    """bf16 autocast on CUDA (fp16 if the GPU has no bf16), nothing on CPU (fp32 is faster there)
    or when ``precision`` is ``fp32``."""
    import contextlib

    import torch

    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def encode_batch(model: Any, images: Any, zoom: int, device: Any) -> np.ndarray:
    """Pre-fusion features (n × D float32 numpy) of a uint8 n × H × W × 3 batch."""
    import torch

    with torch.inference_mode(), encoder_autocast(device, getattr(model, "precision", "auto")):
        if images.device != device:
            images = images.to(device, non_blocking=True)
        features = model.encode_image(images, zoom)
    return features.detach().float().cpu().numpy()


def encode_block(store: EmbeddingStore, block: tuple[slice, slice], rendered: Iterable[RenderedGroup], *,
                 model: Any, zoom: int, device: Any, batch_size: int, flush_every_batch: bool,
                 on_batch: Callable[[int, int], None] | None = None) -> BlockResult:
    """Encode a block's rendered groups ``batch_size`` cells at a time into ``store``.

    Features are written before the states that vouch for them. ``flush_every_batch`` (one
    machine) writes the block after every batch, so an interrupted run loses at most the batch in
    flight; otherwise (a cluster task) the block is written once at the end, so a killed worker
    leaves the whole block PENDING for the task's retry. ``on_batch(n_embedded, n_missing)`` is
    called after each batch.
    """
    rows, cols = block
    result = BlockResult(block=(rows.start, cols.start))
    features, state = (np.array(a) for a in store.read_block(rows, cols))
    touched = False
    for item in rendered:
        group = item.group
        local_r, local_c = group.rows - rows.start, group.cols - cols.start
        image_index = np.cumsum(item.valid) - 1  # position of each valid cell among the images
        for start in range(0, len(group.rows), batch_size):
            cells = slice(start, start + batch_size)
            valid = item.valid[cells]
            r, c = local_r[cells], local_c[cells]
            if valid.any():
                picks = image_index[cells][valid]
                images = item.images[int(picks[0]):int(picks[-1]) + 1]
                features[r[valid], c[valid]] = encode_batch(model, images, zoom, device)
                result.batches += 1
                touched = True
            state[r, c] = np.where(valid, CellState.EMBEDDED, CellState.NO_IMAGERY)
            if flush_every_batch:
                store.write_block(rows, cols, features if valid.any() else None, state)
            n_valid = int(valid.sum())
            result.embedded += n_valid
            result.missing += len(valid) - n_valid
            if on_batch is not None:
                on_batch(n_valid, len(valid) - n_valid)
    if not flush_every_batch and (result.embedded or result.missing):
        store.write_block(rows, cols, features if touched else None, state)
    return result


def worker_name() -> str:
    """The Dask worker running this (its address), else this process."""
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"
