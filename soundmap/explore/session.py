"""The explorer's state: one workspace, one model, fused settings and cached query results.

Why it is shaped this way:

* Fusion dominates a query's cost and does not depend on the query (see ``soundmap.query.engine``),
  so a metadata setting is *prepared* once — fused through the engine's own
  :func:`~soundmap.query.engine.fused_blocks` into the workspace's fused cache — in a background
  worker, while the page shows its progress and every other request is still answered.
* Preparing a setting also keeps two small per-cell grids in memory: ``Σ exp(logvar)`` (the only
  part of the cells' log-variances the closed-form distance uses) and the uncertainty ‖σ‖₁. A new
  query on a prepared setting is then one text-encoder forward plus, per store chunk, one read of
  the fused means and one matrix product — no fusion, no log-variances read again.
* Results are cached per (model, queries, metadata setting, score, zoom), bounded in bytes. Memory
  is a few float32 values per cell: features and fused vectors are only ever held a chunk at a time.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, SoundmapError
from ..query.engine import FusionCounter, _open_cache, encode_queries, fused_blocks, run_query, store_blocks
from ..query.fused_cache import store_fingerprint
from ..query.normalize import sigma_l1
from ..query.plan import MetadataSetting, QueryOptions, QueryPlan, make_plan, model_components
# The workflow helpers: zoom choice, model loading and checks (the explorer sits on the pipeline).
from ..pipeline.models import load_query_model
from ..pipeline.query import FUSED_CACHE_DIR, check_model_matches_store, embedded_zooms
from ..tiles.render import area_imagery

EXPLORE_DIR = "explore"
"""Sub-directory of the workspace where the explorer keeps uploads and exports (nothing else is served)."""

MAX_UPLOAD_BYTES = 20 * 2**20
"""Largest audio upload accepted (a minute of 48 kHz stereo 16-bit PCM is ~11 MB)."""

MAX_AUDIO_SECONDS = 120.0
"""Longest uploaded clip accepted (the model looks at ~10 s windows; longer clips only cost time)."""

MU_MEMORY_BYTES = 256 * 2**20
"""Fused means of the most recent setting kept in memory when they fit (a 100,000-cell region's
take 200 MB): a query is then one matrix product instead of a read of every chunk. Larger regions
are streamed chunk by chunk from the fused cache, so memory stays bounded whatever the size."""

RESULT_CACHE_BYTES = 512 * 2**20
"""Query results kept in memory, least recently used dropped first."""

PREPARED_SETTINGS = 48
"""Prepared settings kept in memory (9 bytes a cell each): two days of hours."""

_UPLOAD_ID = re.compile(r"^[0-9a-f]{16}\.(wav|flac|ogg|mp3|aiff?|au)$")


class NotReady(SoundmapError):
    """A query's metadata setting is still being fused (the page polls the job)."""

    def __init__(self, job: "PrepareJob") -> None:
        super().__init__(f"fusing {job.label}: {job.done}/{job.total} chunks")
        self.job = job


@dataclass
class PrepareJob:
    """Background fusion of one (zoom, setting) into the fused cache, with its progress."""

    key: str
    label: str
    total: int
    done: int = 0
    error: str | None = None
    future: Future | None = None

    @property
    def finished(self) -> bool:
        return self.future is not None and self.future.done()

    def as_dict(self) -> dict[str, Any]:
        return {"job": self.key, "label": self.label, "done": self.done, "total": self.total,
                "finished": self.finished, "error": self.error}


@dataclass
class PreparedSetting:
    """What scoring a prepared setting needs besides the fused means: per-cell grids."""

    cache: Any  # FusedCache
    blocks: list[tuple[slice, slice]]
    valid: np.ndarray  # rows × cols bool
    var_sum: np.ndarray | None  # rows × cols float32 Σ exp(logvar) (probabilistic models)
    sigma: np.ndarray | None  # rows × cols float32 ‖σ‖₁ (NaN where no imagery)
    sigma_range: tuple[float, float] = (0.0, 0.0)
    mu: np.ndarray | None = None  # n_valid × D fused means held in memory (small regions), else None
    cells: np.ndarray | None = None  # flat grid index of each row of ``mu``


@dataclass
class QueryResult:
    """Scores of Q queries on one setting (Q × rows × cols float32, NaN = no imagery)."""

    key: str
    zoom: int
    plan: QueryPlan
    scores: np.ndarray
    ranges: list[tuple[float, float]]
    setting: MetadataSetting
    uncertainty_range: tuple[float, float] | None = None
    sorted_scores: list[np.ndarray] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "zoom": self.zoom, "labels": [q.label for q in self.plan.queries],
                "ranges": [list(r) for r in self.ranges], "score": self.plan.score,
                "setting": self.setting.as_dict(), "uncertainty_range":
                    list(self.uncertainty_range) if self.uncertainty_range else None}

    def rank(self, q: int, value: float) -> int:
        """1 + the number of cells scoring strictly higher than ``value`` for query ``q``."""
        while len(self.sorted_scores) <= q:
            flat = self.scores[len(self.sorted_scores)].ravel()
            self.sorted_scores.append(np.sort(flat[np.isfinite(flat)]))
        ordered = self.sorted_scores[q]
        return int(len(ordered) - np.searchsorted(ordered, value, side="right") + 1)


@dataclass(frozen=True)
class ViewRequest:
    """One query as the page sends it (before validation)."""

    texts: tuple[str, ...] = ()
    audios: tuple[str, ...] = ()  # upload ids
    combine: bool = False
    month: int | None = None
    hour: int | None = None
    audio_source: str | None = None
    caption_source: str | None = None
    latlon: bool | None = None
    score: str | None = None
    zoom: int | None = None


class Explorer:
    """Everything the web app serves, for one workspace and one model."""

    def __init__(self, workspace: Any, *, model: Any = None, device: str = "cpu", cache_dir: Any = None,
                 max_upload_bytes: int = MAX_UPLOAD_BYTES, max_audio_seconds: float = MAX_AUDIO_SECONDS,
                 mu_memory_bytes: int = MU_MEMORY_BYTES) -> None:
        from ..store.embeddings import open_embedding_store
        from ..pipeline.workspace import Workspace

        self.workspace = workspace if isinstance(workspace, Workspace) else Workspace.load(workspace)
        self.root = Path(self.workspace.path).resolve()
        self.zooms = embedded_zooms(self.workspace)
        if not self.zooms:
            raise InputError(f"no embeddings in workspace {self.root}; run `soundmap embed` first")
        self.stores = {zoom: open_embedding_store(self.workspace, zoom) for zoom in self.zooms}
        self.model = load_query_model(model, self.stores[self.zooms[0]], device=device, cache_dir=cache_dir)
        for store in self.stores.values():
            check_model_matches_store(self.model, store)
        self.components = model_components(self.model)
        self.tile_cache = self.workspace.tile_cache(cache_dir)
        self.imagery = area_imagery(self.workspace.source(), self.tile_cache)
        self.max_upload_bytes = max_upload_bytes
        self.max_audio_seconds = max_audio_seconds
        self.mu_memory_bytes = mu_memory_bytes
        self.explore_dir = self.root / EXPLORE_DIR
        self._digests: dict[int, str] = {}
        self._prepared: dict[str, PreparedSetting] = {}
        self._jobs: dict[str, PrepareJob] = {}
        self._results: OrderedDict[str, QueryResult] = OrderedDict()
        self._lock = threading.RLock()
        self._encode_lock = threading.Lock()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="soundmap-fuse")

    # ------------------------------------------------------------------ description
    def info(self) -> dict[str, Any]:
        """What the page needs to build its controls."""
        ws = self.workspace
        west, south, east, north = ws.region.bbox
        return {"model": self.model.name, "probabilistic": bool(self.model.probabilistic),
                "default_score": getattr(self.model, "default_score", "csd" if self.model.probabilistic else "cosine"),
                "components": sorted(self.components), "zooms": self.zooms,
                "bbox": [west, south, east, north], "outline": self.outline(),
                "attribution": ws.attribution, "licence": ws.licence, "source": ws.source_spec,
                "basemap_zoom": self.basemap_zoom(), "max_upload_bytes": self.max_upload_bytes,
                "max_audio_seconds": self.max_audio_seconds}

    def outline(self) -> dict[str, Any]:
        """The region outline as GeoJSON (the AOI when there is one, else the bbox)."""
        geometry = self.workspace.aoi_geometry()
        if geometry is not None:
            from shapely.geometry import mapping

            return {"type": "Feature", "properties": {}, "geometry": mapping(geometry)}
        west, south, east, north = self.workspace.region.bbox
        ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
        return {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}

    def basemap_tiles(self) -> tuple[int | None, set[tuple[int, int, int]]]:
        """The web-mercator tiles of the workspace's imagery (what the basemap may serve)."""
        if not hasattr(self, "_basemap"):
            from ..pipeline.workspace import plan_zoom

            tiles: set[tuple[int, int, int]] = set()
            web_zoom = None
            for zoom in self.workspace.zooms:
                plan = plan_zoom(self.workspace, zoom)
                if plan.web_zoom >= 0:
                    web_zoom = plan.web_zoom if web_zoom is None else max(web_zoom, plan.web_zoom)
                    tiles.update(plan.tiles)
            self._basemap = (web_zoom, tiles)
        return self._basemap

    def basemap_zoom(self) -> int | None:
        return self.basemap_tiles()[0]

    def grid(self, zoom: int) -> Any:
        return self.stores[zoom].grid

    def default_zoom(self, zoom: int | None) -> int:
        if zoom is None:
            return self.zooms[0]
        if int(zoom) not in self.stores:
            raise InputError(f"zoom {zoom} has no embeddings here; choose one of {', '.join(map(str, self.zooms))}")
        return int(zoom)

    # ------------------------------------------------------------------ validation
    def options(self, request: ViewRequest, out: Path | str = "explore.tif", **outputs: Any) -> QueryOptions:
        """The ``soundmap query`` options of a page request (the exported COG is made from these)."""
        audios = tuple(self.upload_path(audio) for audio in request.audios)
        return QueryOptions(out=out, texts=tuple(request.texts), audios=audios, combine=request.combine,
                            months=() if request.month is None else (str(request.month),),
                            hours=() if request.hour is None else (str(request.hour),),
                            audio_source=request.audio_source, caption_source=request.caption_source,
                            latlon=request.latlon, score=request.score, zoom=request.zoom, **outputs)

    def plan(self, request: ViewRequest, **outputs: Any) -> QueryPlan:
        """Validate a page request exactly as ``soundmap query`` validates its options."""
        if not request.texts and not request.audios:
            raise InputError("the query is empty; type a sound to look for (e.g. birds singing) or upload a clip")
        return make_plan(self.options(request, **outputs), self.model)

    # ------------------------------------------------------------------ uploads
    def save_upload(self, data: bytes, filename: str) -> dict[str, Any]:
        """Keep an uploaded clip in the workspace, once it decodes and is short enough."""
        from ..preprocess.audio import load_audio

        if len(data) > self.max_upload_bytes:
            raise InputError(f"the audio file is {len(data) / 2**20:.1f} MB, over the "
                             f"{self.max_upload_bytes / 2**20:.0f} MB limit; upload a shorter clip")
        if not data:
            raise InputError("the uploaded file is empty; choose an audio file")
        ext = Path(filename or "").suffix.lower().lstrip(".") or "wav"
        if not _UPLOAD_ID.match(f"{'0' * 16}.{ext}"):
            raise InputError(f"{filename!r} is not a supported audio file; upload wav, flac, ogg, mp3 or aiff")
        upload_id = f"{hashlib.sha256(data).hexdigest()[:16]}.{ext}"
        target = self.explore_dir / "uploads" / upload_id
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = target.with_name(f".{upload_id}.part")
        scratch.write_bytes(data)
        try:
            waveform, rate = load_audio(scratch)  # the project's safe decoder (libsndfile)
        except SoundmapError:
            scratch.unlink(missing_ok=True)
            raise InputError(f"{filename!r} is not an audio file soundmap can decode; upload wav, flac, ogg or mp3") \
                from None
        seconds = len(waveform) / float(rate)
        if seconds > self.max_audio_seconds:
            scratch.unlink(missing_ok=True)
            raise InputError(f"the clip is {seconds:.0f} s long, over the {self.max_audio_seconds:.0f} s limit; "
                             "upload a shorter clip")
        scratch.replace(target)
        return {"id": upload_id, "name": filename, "seconds": round(seconds, 2)}

    def upload_path(self, upload_id: str) -> Path:
        """The stored clip of an upload id (ids are checked, so no path leaves the uploads folder)."""
        if not _UPLOAD_ID.match(str(upload_id)):
            raise InputError(f"unknown audio upload {upload_id!r}; upload the file again")
        path = self.explore_dir / "uploads" / upload_id
        if not path.is_file():
            raise InputError(f"unknown audio upload {upload_id!r}; upload the file again")
        return path

    def served_file(self, relative: str) -> Path:
        """A file under the explorer's folder of the workspace, or a one-line InputError."""
        base = self.explore_dir.resolve()
        path = (base / relative).resolve()
        if base not in path.parents or not path.is_file():
            raise InputError(f"{relative!r} is not a file the explorer made in this workspace")
        return path

    # ------------------------------------------------------------------ fusion (background)
    def _digest(self, zoom: int) -> str:
        if zoom not in self._digests:
            self._digests[zoom] = store_fingerprint(self.stores[zoom])
        return self._digests[zoom]

    def _setting_key(self, zoom: int, setting: MetadataSetting) -> str:
        return f"z{zoom}:{setting.key()}"

    def prepared(self, zoom: int, setting: MetadataSetting) -> PreparedSetting:
        """The prepared setting, or :class:`NotReady` after starting (or finding) its fusion job."""
        key = self._setting_key(zoom, setting)
        with self._lock:
            if key in self._prepared:
                return self._prepared[key]
            job = self._jobs.get(key)
            if job is not None and job.finished and job.error is not None:
                del self._jobs[key]  # the next request retries
                raise InputError(f"fusing {setting.label()} failed: {job.error}; send the query again to retry")
            if job is None or job.finished:  # never started, or prepared and evicted since
                store = self.stores[zoom]
                job = PrepareJob(key=key, label=setting.label(), total=sum(1 for _ in store_blocks(
                    store, (slice(0, store.shape[0]), slice(0, store.shape[1])))))
                self._jobs[key] = job
                job.future = self._worker.submit(self._prepare, job, zoom, setting)
        raise NotReady(job)

    def job(self, key: str) -> PrepareJob:
        job = self._jobs.get(key)
        if job is None:
            raise InputError(f"no fusion job {key!r}; send the query again")
        return job

    def wait(self, zoom: int, setting: MetadataSetting) -> PreparedSetting:
        """Prepare a setting and wait for it (exports, scripts and benchmarks)."""
        try:
            return self.prepared(zoom, setting)
        except NotReady as pending:
            assert pending.job.future is not None
            pending.job.future.result()
            return self.prepared(zoom, setting)

    def _prepare(self, job: PrepareJob, zoom: int, setting: MetadataSetting) -> None:
        """Fuse every chunk of the store through the engine (cache hits are read, misses fused and
        written to the workspace cache) and keep the per-cell grids scoring needs."""
        try:
            store = self.stores[zoom]
            rows, cols = store.shape
            cache = _open_cache(setting, cache_root=self.root / FUSED_CACHE_DIR, model=self.model, store=store,
                                zoom=zoom, store_digest=self._digest(zoom))
            valid = np.zeros((rows, cols), bool)
            probabilistic = bool(self.model.probabilistic)
            var_sum = np.full((rows, cols), np.nan, np.float32) if probabilistic else None
            sigma = np.full((rows, cols), np.nan, np.float32) if probabilistic else None
            blocks = []
            window = (slice(0, rows), slice(0, cols))
            n_valid = int(np.count_nonzero(store.valid_mask()))
            dim = int(self.model.config.fc_dim)
            in_memory = n_valid * dim * 4 <= self.mu_memory_bytes
            if in_memory:
                with self._lock:  # one setting's means in memory at a time
                    for other in self._prepared.values():
                        other.mu = other.cells = None
            mu = np.empty((n_valid, dim), np.float32) if in_memory else None
            cells = np.empty(n_valid, np.int64) if in_memory else None
            filled = 0
            for block in fused_blocks(self.model, store, setting, window, cache, FusionCounter()):
                blocks.append((block.rows, block.cols))
                valid[block.rows, block.cols] = block.valid
                if mu is not None:
                    local_r, local_c = np.nonzero(block.valid)
                    count = min(len(local_r), n_valid - filled)
                    mu[filled:filled + count] = block.mu[local_r[:count], local_c[:count]]
                    cells[filled:filled + count] = (local_r[:count] + block.rows.start) * cols + \
                        local_c[:count] + block.cols.start
                    filled += count
                if block.logvar is not None:
                    var_sum[block.rows, block.cols] = _variance_sum(block.logvar, block.valid)
                    sigma[block.rows, block.cols] = np.where(block.valid, sigma_l1(block.logvar), np.nan)
                job.done += 1
            finite = sigma[np.isfinite(sigma)] if sigma is not None else np.zeros(0)
            sigma_range = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
            with self._lock:
                self._prepared[job.key] = PreparedSetting(
                    cache=cache, blocks=blocks, valid=valid, var_sum=var_sum, sigma=sigma, sigma_range=sigma_range,
                    mu=mu[:filled] if mu is not None else None, cells=cells[:filled] if cells is not None else None)
                while len(self._prepared) > PREPARED_SETTINGS:  # re-preparing one is a fused-cache read
                    self._prepared.pop(next(iter(self._prepared)))
        except Exception as exc:  # reported to the page through the job
            job.error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise

    # ------------------------------------------------------------------ queries
    def query(self, request: ViewRequest) -> QueryResult:
        """Scores of a page request (cached), or :class:`NotReady` while its setting is fused."""
        plan = self.plan(request)
        zoom = self.default_zoom(request.zoom)
        if len(plan.queries) > 3:
            raise InputError(f"the map shows one query or a colour composite of three; got {len(plan.queries)}")
        setting = plan.settings[0]
        key = self.result_key(plan, zoom)
        with self._lock:
            if key in self._results:
                self._results.move_to_end(key)
                return self._results[key]
        prepared = self.prepared(zoom, setting)
        with self._encode_lock:
            query = encode_queries(self.model, plan.queries)
        scores = self._score(plan, query, prepared, zoom)
        ranges = []
        for q in range(scores.shape[0]):
            finite = scores[q][np.isfinite(scores[q])]
            ranges.append((float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0))
        result = QueryResult(key=key, zoom=zoom, plan=plan, scores=scores, ranges=ranges, setting=setting,
                             uncertainty_range=prepared.sigma_range if prepared.sigma is not None else None)
        self._remember(result)
        return result

    def result_key(self, plan: QueryPlan, zoom: int) -> str:
        payload = json.dumps({"model": self.model.weights_sha256, "queries": [q.as_dict() for q in plan.queries],
                              "setting": plan.settings[0].key(), "score": plan.score, "zoom": zoom}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:20]

    def result(self, key: str) -> QueryResult:
        with self._lock:
            if key not in self._results:
                raise InputError(f"unknown or expired result {key!r}; send the query again")
            return self._results[key]

    def _remember(self, result: QueryResult) -> None:
        with self._lock:
            self._results[result.key] = result
            while sum(r.scores.nbytes for r in self._results.values()) > RESULT_CACHE_BYTES and len(self._results) > 1:
                self._results.popitem(last=False)

    def _score(self, plan: QueryPlan, query: Any, prepared: PreparedSetting, zoom: int) -> np.ndarray:
        """Q × rows × cols scores, chunk by chunk from the fused cache's means."""
        import torch

        from ..models.scoring import cosine_similarity, csd_from_parts, variance_sum

        rows, cols = self.stores[zoom].shape
        out = np.full((len(plan.queries), rows, cols), np.nan, np.float32)
        query_mu = query.mu.float().cpu()
        query_var = variance_sum(query.logvar.cpu()) if plan.score == "csd" else None
        mu, cells = prepared.mu, prepared.cells
        if mu is not None and cells is not None:  # the means are in memory: one product for all cells
            with torch.inference_mode():
                tensor = torch.from_numpy(mu)
                if query_var is None:
                    values = cosine_similarity(query_mu, tensor)
                else:
                    cell_var = torch.from_numpy(prepared.var_sum.reshape(-1)[cells])
                    values = -csd_from_parts(query_mu @ tensor.T, query_var, cell_var)
            out.reshape(len(plan.queries), -1)[:, cells] = values.reshape(len(plan.queries), -1).numpy()
            return out
        with torch.inference_mode():
            for block_rows, block_cols in prepared.blocks:
                valid = prepared.valid[block_rows, block_cols]
                local_r, local_c = np.nonzero(valid)
                if not len(local_r):
                    continue
                mu = prepared.cache.read_mu(block_rows, block_cols)[local_r, local_c]
                cells = torch.from_numpy(np.ascontiguousarray(mu, dtype=np.float32))
                if query_var is None:
                    values = cosine_similarity(query_mu, cells)
                else:
                    cell_var = torch.from_numpy(prepared.var_sum[block_rows, block_cols][local_r, local_c])
                    values = -csd_from_parts(query_mu @ cells.T, query_var, cell_var)
                block = out[:, block_rows, block_cols]
                block[:, local_r, local_c] = values.numpy()
        return out

    def uncertainty(self, result: QueryResult) -> np.ndarray:
        prepared = self.prepared(result.zoom, result.setting)
        if prepared.sigma is None:
            raise InputError("the uncertainty layer needs a probabilistic (PSM) model")
        return prepared.sigma

    # ------------------------------------------------------------------ cells
    def cell(self, result: QueryResult, lon: float, lat: float) -> dict[str, Any]:
        """What the page shows for a click: cell indices, centre, score and rank per query."""
        from ..geo.grid import from_lonlat_transformer

        grid = self.grid(result.zoom)
        x, y = from_lonlat_transformer(grid.crs).transform(lon, lat)
        col = int(np.floor((x - grid.x0) / grid.stride))
        row = int(np.floor((grid.y0 - y) / grid.stride))
        if not (0 <= row < grid.rows and 0 <= col < grid.cols):
            raise InputError(f"({lat:.5f}, {lon:.5f}) is outside the mapped region; click inside the outline")
        centre_lon, centre_lat = grid.centers_lonlat([row], [col])
        values = []
        for q, query in enumerate(result.plan.queries):
            value = float(result.scores[q, row, col])
            finite = bool(np.isfinite(value))
            values.append({"label": query.label, "score": value if finite else None,
                           "rank": result.rank(q, value) if finite else None})
        total = int(np.isfinite(result.scores[0]).sum())
        sigma = None
        prepared = self._prepared.get(self._setting_key(result.zoom, result.setting))
        if prepared is not None and prepared.sigma is not None and np.isfinite(prepared.sigma[row, col]):
            sigma = float(prepared.sigma[row, col])
        return {"row": row, "col": col, "zoom": result.zoom, "lat": float(centre_lat[0]), "lon": float(centre_lon[0]),
                "values": values, "cells": total, "uncertainty": sigma,
                "image": f"api/cell/{result.zoom}/{row}/{col}.png"}

    def cell_image(self, zoom: int, row: int, col: int) -> bytes:
        """The imagery of one cell exactly as the model saw it (the embed renderer), as PNG."""
        import io

        from PIL import Image

        from ..tiles.render import render_cell

        grid = self.grid(self.default_zoom(zoom))
        if not (0 <= row < grid.rows and 0 <= col < grid.cols):
            raise InputError(f"cell ({row}, {col}) is outside the {grid.rows} × {grid.cols} grid")
        image = render_cell(grid, row, col, self.workspace.source(), self.tile_cache)
        buffer = io.BytesIO()
        Image.fromarray(image.pixels).save(buffer, format="PNG")
        return buffer.getvalue()

    # ------------------------------------------------------------------ exports
    def export(self, request: ViewRequest, kind: str) -> Path:
        """The current view as ``soundmap query`` writes it: the COG (same engine, writer and tags)
        or the quick-look PNG, under ``<workspace>/explore/exports/``."""
        if kind not in ("tif", "png", "rgb"):
            raise InputError(f"unknown export {kind!r}; use tif or png")
        plan = self.plan(request)
        zoom = self.default_zoom(request.zoom)
        composite = len(plan.queries) == 3
        key = self.result_key(plan, zoom)
        out = self.explore_dir / "exports" / key / "soundmap.tif"
        plan = self.plan(request, out=out, png=(kind == "png"), rgb=composite and kind in ("png", "rgb"),
                         normalize="minmax" if composite and kind in ("png", "rgb") else None)
        self.wait(zoom, plan.settings[0])  # fusion happens in the worker, never twice
        with self._encode_lock:
            query = encode_queries(self.model, plan.queries)
        run_query(plan, model=self.model, store=self.stores[zoom], attribution=self.workspace.attribution,
                  cache_root=self.root / FUSED_CACHE_DIR, query=query, imagery=self.imagery)
        return out.with_suffix(".png") if kind == "png" else (out.with_name("soundmap_rgb.tif") if kind == "rgb"
                                                                else out)

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)


def _variance_sum(logvar: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Σ exp(logvar) per cell (NaN where no imagery), with the scoring module's own formula."""
    import torch

    from ..models.scoring import variance_sum

    out = np.full(valid.shape, np.nan, np.float32)
    local_r, local_c = np.nonzero(valid)
    if len(local_r):
        out[local_r, local_c] = variance_sum(torch.from_numpy(np.ascontiguousarray(logvar[local_r, local_c]))).numpy()
    return out
