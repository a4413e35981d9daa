"""The streaming query engine: embeddings chunk by chunk → fusion → scores → GeoTIFF windows.

Why it is shaped this way (performance.md):

* Fusion dominates the cost and does not depend on the query, so the outer loop runs over the
  metadata *settings*, the inner one over store chunks; each fused chunk is scored against all Q
  queries at once (one (Q × n) product), so a 3-query composite costs one fusion pass.
* Fused chunks are kept in the workspace (:mod:`.fused_cache`) and reused by later calls.
* Nothing of region size is held in memory: scores go straight into a tiled scratch GeoTIFF;
  normalisation is a second windowed pass over it (running min/max, then a fixed-size histogram
  for percentiles — :mod:`.normalize`); COG conversion and previews are done by GDAL from disk
  (previews from overviews). Peak memory is one chunk of features plus GDAL's capped block cache.
* Every output file appears atomically, all together at the end (:class:`PendingOutputs`).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import InputError
from ..geo.grid import window_for_bbox
from ..progress import progress
from ..scratch import scratch_prefix, sweep_stale
from ..raster.cog import PendingOutputs, RasterGeometry, ScratchRaster, block_windows, gdal_env, to_uint8
from ..raster.preview import (MapLayer, Panel, decimated_geometry, describe_setting, read_decimated, write_gif,
                              write_map_png)
from .fused_cache import FusedCache, fused_cache_key, store_fingerprint
from .normalize import PERCENTILE_DEFAULT, RunningRange, Scale, StreamingHistogram, sigma_l1
from .plan import MetadataSetting, QueryPlan, QuerySpec

FUSE_BATCH = 4096
"""Cells per fusion call (the fusion transformer's throughput flattens out around here on CPU)."""


@dataclass
class QueryResult:
    """What a query call produced, plus counters the tests and benchmarks read."""

    paths: list[Path]
    scales: list[Scale]
    fused_cells: int = 0
    cached_blocks: int = 0
    computed_blocks: int = 0
    fuse_calls: int = 0
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class FusedBlock:
    """Fused embeddings of one store chunk, cropped to the output window."""

    rows: slice  # output-raster rows
    cols: slice  # output-raster cols
    mu: np.ndarray  # h × w × D
    logvar: np.ndarray | None
    valid: np.ndarray  # h × w bool


def crop_to_window(rows: slice, cols: slice, window: tuple[slice, slice], mu: np.ndarray,
                   logvar: np.ndarray | None, valid: np.ndarray) -> FusedBlock:
    """The part of a fused store block (``rows`` × ``cols`` of the grid) inside the output
    ``window``, in window coordinates: blocks are chunk-aligned, the window (``--bbox``) is not.
    The caller guarantees the block meets the window."""
    out_rows = slice(max(rows.start, window[0].start), min(rows.stop, window[0].stop))
    out_cols = slice(max(cols.start, window[1].start), min(cols.stop, window[1].stop))
    local_r = slice(out_rows.start - rows.start, out_rows.stop - rows.start)
    local_c = slice(out_cols.start - cols.start, out_cols.stop - cols.start)
    return FusedBlock(rows=slice(out_rows.start - window[0].start, out_rows.stop - window[0].start),
                      cols=slice(out_cols.start - window[1].start, out_cols.stop - window[1].start),
                      mu=mu[local_r, local_c], logvar=None if logvar is None else logvar[local_r, local_c],
                      valid=valid[local_r, local_c])


# ----------------------------------------------------------------------------- queries
def encode_queries(model: Any, queries: Sequence[QuerySpec]) -> Any:
    """One Embedding with a row per query (text, audio, or audio + text combined).

    All texts are encoded in one call and all audio files in one call; a combined query is
    ``Embedding.combine(audio, text)`` (psm-reference "Text added to the query").
    """
    from ..models.embedding import Embedding

    texts = [q.text for q in queries if q.text is not None]
    audios = [str(q.audio) for q in queries if q.audio is not None]
    text_rows = model.encode_text(texts) if texts else None
    audio_rows = model.encode_audio(audios) if audios else None
    rows = []
    text_index = audio_index = 0
    for query in queries:
        text_row = audio_row = None
        if query.text is not None:
            text_row = text_rows[text_index : text_index + 1]
            text_index += 1
        if query.audio is not None:
            audio_row = audio_rows[audio_index : audio_index + 1]
            audio_index += 1
        if text_row is not None and audio_row is not None:
            rows.append(Embedding.combine(audio_row, text_row))
        else:
            rows.append(text_row if text_row is not None else audio_row)
    embedding = Embedding.cat(rows)
    _require_finite_queries(embedding, queries)
    return embedding


def _require_finite_queries(embedding: Any, queries: Sequence[QuerySpec]) -> None:
    """A query embedding with NaN/Inf scores every cell NaN: an all-nodata map with exit 0. Refuse."""
    import torch

    finite = torch.isfinite(embedding.mu).reshape(embedding.mu.shape[0], -1).all(dim=1)
    if embedding.logvar is not None:
        finite &= torch.isfinite(embedding.logvar).reshape(embedding.logvar.shape[0], -1).all(dim=1)
    bad = [q.label for q, ok in zip(queries, finite.tolist()) if not ok]
    if bad:
        raise InputError(f"query {bad[0]!r} has a non-finite embedding (NaN/Inf); check the audio file "
                         "or re-install the model (`soundmap doctor` checks it)")


# ----------------------------------------------------------------------------- fusion
def _metadata(setting: MetadataSetting, grid: Any, rows: np.ndarray, cols: np.ndarray) -> Any:
    """The model's Metadata for cells (rows, cols) under ``setting``; dropped components are None."""
    from ..preprocess.metadata import Metadata

    lat = lon = None
    if setting.latlon:
        lon, lat = grid.centers_lonlat(rows, cols)
    return Metadata(lat=lat, lon=lon, month=setting.month, hour=setting.hour,
                    audio_source=setting.audio_source, caption_source=setting.caption_source)


def fuse_cells(model: Any, grid: Any, setting: MetadataSetting, features: np.ndarray, rows: np.ndarray,
               cols: np.ndarray, batch: int = FUSE_BATCH) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Fuse ``features`` (n × 512) of cells (rows, cols) in batches; returns (mu, logvar, fuse calls)."""
    import torch

    mus, logvars, calls = [], [], 0
    with torch.inference_mode():
        for start in range(0, len(features), batch):
            stop = start + batch
            tensor = torch.from_numpy(np.ascontiguousarray(features[start:stop], dtype=np.float32)).to(model.device)
            fused = model.fuse(tensor, _metadata(setting, grid, rows[start:stop], cols[start:stop]))
            calls += 1
            mus.append(fused.mu.detach().float().cpu().numpy())
            if fused.logvar is not None:
                logvars.append(fused.logvar.detach().float().cpu().numpy())
    mu = np.concatenate(mus) if mus else np.zeros((0, 0), np.float32)
    logvar = np.concatenate(logvars) if logvars else None
    return mu, logvar, calls


def fuse_block(model: Any, grid: Any, setting: MetadataSetting, rows: slice, cols: slice, features: np.ndarray,
               valid: np.ndarray, batch: int = FUSE_BATCH) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Fuse the valid cells of one store chunk into h × w × D arrays (zeros where invalid)."""
    local_r, local_c = np.nonzero(valid)
    mu_cells, logvar_cells, calls = fuse_cells(model, grid, setting, features[local_r, local_c],
                                               local_r + rows.start, local_c + cols.start, batch)
    height, width = valid.shape
    dim = int(model.config.fc_dim)
    mu = np.zeros((height, width, dim), np.float32)
    logvar = np.zeros((height, width, dim), np.float32) if model.probabilistic else None
    if len(local_r):
        mu[local_r, local_c] = mu_cells
        if logvar is not None and logvar_cells is not None:
            logvar[local_r, local_c] = logvar_cells
    return mu, logvar, calls


def _intersect(block: slice, window: slice) -> slice | None:
    start, stop = max(block.start, window.start), min(block.stop, window.stop)
    return slice(start, stop) if stop > start else None


@dataclass
class FusionCounter:
    """How much fusion a call did (the '3 queries = 1 fusion pass' promise is tested on it)."""

    fused_cells: int = 0
    fuse_calls: int = 0
    cached_blocks: int = 0
    computed_blocks: int = 0

    def computed(self, calls: int, valid: np.ndarray) -> None:
        """Count one block fused here (not read from the fused cache)."""
        self.fuse_calls += calls
        self.fused_cells += int(valid.sum())
        self.computed_blocks += 1


def store_blocks(store: Any, window: tuple[slice, slice]) -> Iterator[tuple[slice, slice]]:
    """The store's chunk-aligned blocks that overlap ``window``."""
    for rows, cols in store.blocks():
        if _intersect(rows, window[0]) is not None and _intersect(cols, window[1]) is not None:
            yield rows, cols


def read_store_block(store: Any, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
    """Features (float32) and validity of one store block."""
    from ..store.embeddings import CellState

    features, state = store.read_block(rows, cols)
    return np.asarray(features, dtype=np.float32), np.asarray(state) == CellState.EMBEDDED


def fused_blocks(model: Any, store: Any, setting: MetadataSetting, window: tuple[slice, slice],
                 cache: FusedCache | None, counter: FusionCounter, batch: int = FUSE_BATCH) -> Iterator[FusedBlock]:
    """Fused embeddings of every store chunk overlapping ``window``, from the cache when possible.

    A cached block is read from the cache alone (the store's features are not even read).
    """
    grid = store.grid
    for rows, cols in store_blocks(store, window):
        if cache is not None and cache.has(rows, cols):
            mu, logvar, valid = cache.read(rows, cols)
            counter.cached_blocks += 1
        else:
            features, valid = read_store_block(store, rows, cols)
            mu, logvar, calls = fuse_block(model, grid, setting, rows, cols, features, valid, batch)
            counter.computed(calls, valid)
            if cache is not None:
                cache.write(rows, cols, mu, logvar, valid)
        yield crop_to_window(rows, cols, window, mu, logvar, valid)


# ----------------------------------------------------------------------------- scoring
def score_block(query: Any, block: FusedBlock, method: str, device: Any = None) -> np.ndarray:
    """Scores (Q × h × w float32, NaN where the cell has no imagery) of all queries on one block."""
    import torch

    from ..models.embedding import Embedding
    from ..models.scoring import score

    height, width = block.valid.shape
    query_rows = query.mu.shape[0]
    out = np.full((query_rows, height, width), np.nan, dtype=np.float32)
    local_r, local_c = np.nonzero(block.valid)
    if not len(local_r):
        return out
    mu = torch.from_numpy(np.ascontiguousarray(block.mu[local_r, local_c]))
    logvar = None if block.logvar is None else torch.from_numpy(np.ascontiguousarray(block.logvar[local_r, local_c]))
    if device is not None:
        mu = mu.to(device)
        logvar = None if logvar is None else logvar.to(device)
    with torch.inference_mode():
        # raw_mu is only read when combining queries; cells are never combined
        values = score(query, Embedding(mu=mu, logvar=logvar, raw_mu=mu), method=method)
    values = values.detach().float().cpu().numpy().reshape(query_rows, -1)
    out[:, local_r, local_c] = values
    return out


# ----------------------------------------------------------------------------- the call
def _tags(plan: QueryPlan, model: Any, attribution: str, zoom: int) -> dict[str, str]:
    return {
        "soundmap_version": __version__,
        "model": str(getattr(model, "name", "")),
        "model_sha256": str(getattr(model, "weights_sha256", "")),
        "query": json.dumps([q.label for q in plan.queries], ensure_ascii=False),
        "query_inputs": json.dumps([q.as_dict() for q in plan.queries], ensure_ascii=False),
        "metadata": json.dumps([s.as_dict() for s in plan.settings], ensure_ascii=False),
        "score": f"{plan.score} ({'negative closed-form sampled distance' if plan.score == 'csd' else 'cosine similarity'}; higher = more likely heard)",
        "zoom": str(zoom),
        "attribution": attribution or "",
        **plan.extra_tags,
    }


def _coverage_tags(store: Any) -> dict[str, str]:
    """How complete the map is (cells embedded, pending, without imagery), for its tags."""
    from ..store.embeddings import coverage, coverage_tags

    return coverage_tags(coverage(store)) if hasattr(store, "counts") else {}


def _open_cache(plan_setting: MetadataSetting, *, cache_root: Path | None, model: Any, store: Any, zoom: int,
                store_digest: str | None) -> FusedCache | None:
    if cache_root is None or store_digest is None:
        return None
    grid = store.grid
    key = fused_cache_key(model_hash=str(getattr(model, "weights_sha256", getattr(model, "name", ""))), zoom=zoom,
                          grid=grid.to_dict(), setting_key=plan_setting.key(), store_digest=store_digest)
    chunks = tuple(store.features.chunks[:2])
    return FusedCache(Path(cache_root) / key, shape=(grid.rows, grid.cols), chunks=chunks,
                      probabilistic=bool(model.probabilistic),
                      description={"model": getattr(model, "name", ""), "zoom": zoom, "setting": plan_setting.as_dict()})


def run_query(plan: QueryPlan, *, model: Any, store: Any, attribution: str = "", cache_root: Path | None = None,
              batch: int = FUSE_BATCH, query: Any = None, blocks: Any = None, imagery: Any = None) -> QueryResult:
    """Make every output of ``plan`` from an embedding ``store`` with ``model``.

    ``cache_root`` is where fused embeddings are cached (``<workspace>/fused``); None disables it.
    ``query`` is the already encoded queries (:func:`encode_queries`), to fail early on bad audio
    before expensive work; encoded here when None. ``blocks`` replaces :func:`fused_blocks` (same
    signature): :mod:`soundmap.distributed.query` passes one that fuses on a Dask cluster.
    ``imagery`` (:func:`soundmap.tiles.render.area_imagery`) draws the region's imagery under the
    ``--png`` quick-look; without it the heatmap is drawn alone.
    """
    grid = store.grid
    zoom = int(getattr(grid, "zoom", plan.zoom or 0))
    window = window_for_bbox(grid, plan.bbox) if plan.bbox is not None else (slice(0, grid.rows), slice(0, grid.cols))
    geometry = RasterGeometry.from_grid(grid, *window)
    query = query if query is not None else encode_queries(model, plan.queries)
    counter = FusionCounter()
    tags = {**_tags(plan, model, attribution, zoom), **_coverage_tags(store)}
    outputs = plan.outputs
    stream = _ScoreStream(plan=plan, model=model, store=store, query=query, window=window, geometry=geometry,
                          zoom=zoom, cache_root=cache_root, counter=counter, batch=batch, blocks=blocks or fused_blocks)
    outputs.out.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(outputs.out.parent)  # what a killed query left beside --out
    with gdal_env(), tempfile.TemporaryDirectory(prefix=scratch_prefix(), dir=outputs.out.parent) as tmpdir, \
            PendingOutputs() as pending:
        scratch_dir = Path(tmpdir)
        raw_path, sigma_path, ranges = stream.run(scratch_dir, tags)
        raw_cog = pending.cog(raw_path, outputs.out)
        if sigma_path is not None:
            pending.cog(sigma_path, outputs.uncertainty_path)
        method = outputs.normalize or "minmax"
        scales = [_group_scale(raw_path, plan, q, ranges[q], method) for q in range(len(plan.queries))]
        if outputs.normalize:
            _write_normalised(plan, raw_path, scales, scratch_dir, pending, tags, geometry)
        if outputs.rgb:
            _write_rgb(plan, raw_path, scales, scratch_dir, pending, tags, geometry)
        if outputs.png:
            _write_png(plan, raw_cog, scales, pending, attribution,
                       _MapContext(model_name=str(getattr(model, "name", "")), grid=grid, imagery=imagery))
        if outputs.gif:
            _write_gifs(plan, raw_cog, scales, pending, attribution)
        paths = pending.destinations
    return QueryResult(paths=paths, scales=scales, fused_cells=counter.fused_cells, cached_blocks=counter.cached_blocks,
                       computed_blocks=counter.computed_blocks, fuse_calls=counter.fuse_calls, tags=tags)


@dataclass
class _ScoreStream:
    """The streaming pass: for each metadata setting, fused chunks → scores of every query → the
    raw-score scratch raster (and the uncertainty one), plus each query's running min/max."""

    plan: QueryPlan
    model: Any
    store: Any
    query: Any
    window: tuple[slice, slice]
    geometry: RasterGeometry
    zoom: int
    cache_root: Path | None
    counter: FusionCounter
    batch: int
    blocks: Any

    def run(self, scratch_dir: Path, tags: dict[str, str]) -> tuple[Path, Path | None, list[RunningRange]]:
        plan = self.plan
        settings = plan.settings
        ranges = [RunningRange() for _ in plan.queries]
        digest = store_fingerprint(self.store) if self.cache_root is not None else None
        with ScratchRaster(scratch_dir / "raw.tif", self.geometry, plan.band_count, "float32", float("nan")) as raw, \
                self._sigma_raster(scratch_dir) as sigma:
            for s, setting in enumerate(settings):
                cache = _open_cache(setting, cache_root=self.cache_root, model=self.model, store=self.store,
                                    zoom=self.zoom, store_digest=digest)
                fused = self.blocks(self.model, self.store, setting, self.window, cache, self.counter, self.batch)
                for block in progress(fused, desc=f"query {setting.label()}", unit="chunk"):
                    _write_block(plan, self.query, block, s, raw, sigma, ranges, self.geometry)
            raw.describe({**tags, "normalization": "none (raw scores)", "units": "score"}, *_band_descriptions(plan))
            if sigma is not None:
                sigma.describe({**tags, "normalization": "none", "units": "sum over dimensions of sigma = exp(logvar / 2)",
                                "description": "uncertainty: L1 norm of sigma of the fused image embedding"},
                               [f"uncertainty | {s.label()}" for s in settings],
                               [{"metadata": json.dumps(s.as_dict())} for s in settings])
        return raw.path, (sigma.path if sigma is not None else None), ranges

    def _sigma_raster(self, scratch_dir: Path) -> Any:
        """The uncertainty scratch raster (one band per setting), or a no-op context without --uncertainty."""
        import contextlib

        if not self.plan.outputs.uncertainty:
            return contextlib.nullcontext(None)
        return ScratchRaster(scratch_dir / "sigma.tif", self.geometry, len(self.plan.settings), "float32", float("nan"))


def _write_block(plan: QueryPlan, query: Any, block: FusedBlock, setting_index: int, raw: ScratchRaster,
                 sigma: ScratchRaster | None, ranges: list[RunningRange], geometry: RasterGeometry) -> None:
    from rasterio.windows import Window

    window = Window(block.cols.start, block.rows.start, block.cols.stop - block.cols.start,
                    block.rows.stop - block.rows.start)
    scores = score_block(query, block, plan.score)
    for q in range(scores.shape[0]):
        raw.write(plan.band_index(q, setting_index), window, scores[q])
        ranges[q].update(scores[q])
    if sigma is not None and block.logvar is not None:
        values = np.where(block.valid, sigma_l1(block.logvar), np.nan).astype(np.float32)
        sigma.write(setting_index + 1, window, values)


def _band_descriptions(plan: QueryPlan) -> tuple[list[str], list[dict[str, str]]]:
    descriptions, band_tags = [], []
    for query in plan.queries:
        for setting in plan.settings:
            descriptions.append(f"{query.label} | {setting.label()}")
            band_tags.append({"query": query.label, "metadata": json.dumps(setting.as_dict())})
    return descriptions, band_tags


def _query_bands(plan: QueryPlan, q: int) -> list[int]:
    return [plan.band_index(q, s) for s in range(len(plan.settings))]


def _group_scale(raw_path: Path, plan: QueryPlan, q: int, value_range: RunningRange, method: str) -> Scale:
    """The 0–1 scale of query ``q`` over the region and all its series steps (one common scale)."""
    if value_range.empty:
        return Scale(0.0, 0.0, method)
    if method == "minmax":
        return Scale(value_range.low, value_range.high, "minmax")
    import rasterio

    histogram = StreamingHistogram(value_range.low, value_range.high)
    with gdal_env(), rasterio.open(raw_path) as src:
        for window in block_windows(src.width, src.height):
            for band in _query_bands(plan, q):
                histogram.update(src.read(band, window=window))
    low, high = PERCENTILE_DEFAULT
    return Scale(histogram.percentile(low), histogram.percentile(high), f"percentile {low:g}-{high:g}")


def _scale_tags(plan: QueryPlan, scales: list[Scale]) -> dict[str, str]:
    return {f"scale_q{q + 1}": scale.describe() for q, scale in enumerate(scales)}


def _write_normalised(plan: QueryPlan, raw_path: Path, scales: list[Scale], scratch_dir: Path,
                      pending: PendingOutputs, tags: dict[str, str], geometry: RasterGeometry) -> None:
    import rasterio

    description = f"{plan.outputs.normalize} over the region and all series steps, per query; 0-1"
    with ScratchRaster(scratch_dir / "norm.tif", geometry, plan.band_count, "float32", float("nan")) as norm, \
            gdal_env(), rasterio.open(raw_path) as src:
        for window in norm.windows():
            for q, scale in enumerate(scales):
                for band in _query_bands(plan, q):
                    norm.write(band, window, scale.apply(src.read(band, window=window)))
        norm.describe({**tags, "normalization": description, **_scale_tags(plan, scales)}, *_band_descriptions(plan))
    pending.cog(scratch_dir / "norm.tif", plan.outputs.norm_path)


def _write_rgb(plan: QueryPlan, raw_path: Path, scales: list[Scale], scratch_dir: Path, pending: PendingOutputs,
               tags: dict[str, str], geometry: RasterGeometry) -> None:
    """One uint8 RGB COG per series step: red, green, blue = queries 1, 2, 3, each on its own scale."""
    import rasterio

    steps = len(plan.settings)
    method = scales[0].method
    for s, setting in enumerate(plan.settings):
        path = scratch_dir / f"rgb_{s}.tif"
        with ScratchRaster(path, geometry, 3, "uint8", 0) as rgb, gdal_env(), rasterio.open(raw_path) as src:
            for window in rgb.windows():
                for q, scale in enumerate(scales):
                    rgb.write(q + 1, window, to_uint8(scale.apply(src.read(plan.band_index(q, s), window=window))))
            rgb.describe({**tags, "normalization": f"{method} per query over the region and all series steps; "
                                                  "values 1-255, 0 = nodata", "metadata_step": setting.label(),
                          **_scale_tags(plan, scales)},
                         [f"{colour}: {query.label}" for colour, query in zip(("red", "green", "blue"), plan.queries)])
        pending.cog(path, plan.outputs.rgb_path(s, steps), resampling="average")


def _preview_title(plan: QueryPlan, q: int | None = None) -> str:
    queries = [plan.queries[q]] if q is not None else plan.queries
    labels = "; ".join(query.label for query in queries)
    settings = plan.settings
    if len(settings) == 1:
        return f"{labels} — {settings[0].label()}"
    return f"{labels} — {len(settings)} steps ({settings[0].label()} … {settings[-1].label()})"


@dataclass(frozen=True)
class _MapContext:
    """What the map quick-look needs besides the scores: the model's name, the grid, the imagery."""

    model_name: str
    grid: Any
    imagery: Any = None


def _plain_query(query: QuerySpec) -> str:
    """A query as a reader says it: “birds singing”, the sound of clip.wav, or both."""
    return query.describe(audio="the sound of {}", text="“{}”")


def _map_title(plan: QueryPlan, context: _MapContext) -> str:
    """Plain words: what is heard where, when, by which model (no internal labels)."""
    settings = plan.settings
    months = sorted({s.month for s in settings if s.month is not None})
    hours = sorted({s.hour for s in settings if s.hour is not None})
    if len(settings) == 1:
        when = describe_setting(settings[0].month, settings[0].hour)
    else:
        when = ", ".join(part for part in (
            describe_setting(months[0], None) if len(months) == 1 else (f"{len(months)} months" if months else ""),
            f"{hours[0]:02d}:00" if len(hours) == 1 else (f"{hours[0]:02d}:00–{hours[-1]:02d}:00" if hours else ""))
            if part)
    if plan.outputs.rgb:
        what = "Red " + ", green ".join([_plain_query(plan.queries[0]), _plain_query(plan.queries[1])]) + \
               ", blue " + _plain_query(plan.queries[2])
    elif len(plan.queries) == 1:
        what = f"Where {_plain_query(plan.queries[0])} is likely heard"
    else:
        what = "Where " + ", ".join(_plain_query(q) for q in plan.queries) + " are likely heard"
    return f"{what} — {when} — model {context.model_name}"


def _step_caption(setting: MetadataSetting) -> str:
    return describe_setting(setting.month, setting.hour)


def _write_png(plan: QueryPlan, raw_path: Path, scales: list[Scale], pending: PendingOutputs, attribution: str,
               context: _MapContext) -> None:
    """The map quick-look: the composite itself for ``--rgb``, else one map per query (or per
    series step), over the region's imagery."""
    geometry = decimated_geometry(raw_path)
    layers = []
    steps = plan.settings
    for s, setting in enumerate(steps):
        caption = _step_caption(setting) if len(steps) > 1 else ""
        bands = [scales[q].apply(read_decimated(raw_path, plan.band_index(q, s))) for q in range(len(plan.queries))]
        if plan.outputs.rgb:
            layers.append(MapLayer(bands, caption))
        else:
            for q, values in enumerate(bands):
                label = _plain_query(plan.queries[q]) if len(plan.queries) > 1 else ""
                layers.append(MapLayer([values], " — ".join(p for p in (label, caption) if p)))
    imagery = None
    if context.imagery is not None:
        found = context.imagery(context.grid, geometry.crs, geometry.transform, geometry.shape)
        if found is not None and found[1].any():
            rgb, covered = found
            imagery = np.dstack([rgb, np.where(covered, 255, 0).astype(np.uint8)])
    label = f"score, {scales[0].method} normalised (higher = more likely heard)"
    write_map_png(pending.temp_path(plan.outputs.png_path), layers, geometry, title=_map_title(plan, context),
                  attribution=attribution, label=label, imagery=imagery,
                  rgb_labels=[_plain_query(q) for q in plan.queries] if plan.outputs.rgb else None,
                  cols=min(len(layers), 6 if len(layers) > 4 else 4))


def _write_gifs(plan: QueryPlan, raw_path: Path, scales: list[Scale], pending: PendingOutputs, attribution: str) -> None:
    for q, query in enumerate(plan.queries):
        frames = [Panel(scales[q].apply(read_decimated(raw_path, plan.band_index(q, s))), setting.label())
                  for s, setting in enumerate(plan.settings)]
        write_gif(pending.temp_path(plan.outputs.gif_path(q, len(plan.queries))), frames,
                  title=_preview_title(plan, q), attribution=attribution,
                  label=f"score, {scales[q].method} normalised over the series")
