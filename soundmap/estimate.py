"""How long and how big a map will be, before any download: ``soundmap estimate``.

For each PSM zoom level of a bbox the estimate counts exactly what the real run will do — the
cells of the grid (:func:`soundmap.geo.grid.make_grid`) and the web-mercator tiles they need
(:func:`soundmap.geo.tileplan.iter_grid_tiles`, streamed, so continental regions fit in memory) —
and turns the counts into time with rates measured on this machine:

* **fetch**: tiles × the source's ``bytes_per_tile``; time = the slowest of the bandwidth
  (bytes ÷ assumed bandwidth), the latency (tiles × latency ÷ concurrent downloads) and the local
  cost of each tile (HTTP client, image check, SQLite commit — measured against a loopback server);
* **embed**: cells ÷ the image encoder's rate (ViT-B/16, the released size, at the device's
  default batch, preprocessing included) plus the time to render each cell from its tiles. On CPU
  rendering takes cores from the encoder, so the two add up; on a GPU the render threads run beside
  it and only the slower of the two counts;
* **query**: cells × metadata steps ÷ the fusion transformer's rate (the released 3 × 512 layers;
  fusion dominates a query — performance.md), plus scoring and GeoTIFF writing per cell and band.

Rates come from a short calibration (about 10–30 s on CPU) cached per machine and device in the
cache directory, or from a JSON file (``--rates FILE``; the format of :class:`Rates`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, InputError

RATES_FORMAT = 1
#: Calibration size: images per encoder batch and cells per fusion batch.
CALIBRATION_FUSION_CELLS = 1024
CALIBRATION_RENDER_CELLS = 4
CALIBRATION_FETCH_TILES = 48
#: Scoring (CSD) + scratch GeoTIFF + COG conversion, seconds per cell per output band. Small next to
#: fusion; measured once on the project's CPU machines (bench/query.py) rather than calibrated.
QUERY_IO_S_PER_CELL_BAND = 4e-6
#: Per query call, whatever the region: encoding the query texts/audio, planning, COG conversion
#: and overviews of small outputs (0.6–1.6 s on the project's CPU machines, bench/estimate.py).
QUERY_FIXED_S = 1.0


# ----------------------------------------------------------------------------- rates

@dataclass(frozen=True)
class Rates:
    """Throughputs of this machine for the steps of a map (what the estimate divides by)."""

    device: str                     #: "cpu" or "cuda"
    encoder_images_per_s: float     #: ViT-B/16 image encoder incl. preprocessing, default batch
    render_s_per_cell: float        #: rendering one cell from cached tiles (one thread)
    render_threads: int             #: threads the embed loop renders with
    fusion_cells_per_s: float       #: released-size fusion transformer, one metadata setting
    fetch_s_per_tile: float         #: local cost of one downloaded tile (HTTP, image check, SQLite)
    query_io_s_per_cell_band: float = QUERY_IO_S_PER_CELL_BAND
    query_fixed_s: float = QUERY_FIXED_S
    machine: str = ""
    measured_at: str = ""
    format: int = RATES_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rates:
        known = {f.name for f in fields(cls)}
        try:
            rates = cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as err:
            raise ConfigError(f"rates file is incomplete ({err}); re-run `soundmap estimate` without --rates "
                              "to calibrate") from None
        for name in ("encoder_images_per_s", "fusion_cells_per_s"):
            if not float(getattr(rates, name)) > 0:
                raise ConfigError(f"rates file: {name} must be positive")
        return rates

    @classmethod
    def load(cls, path: str | os.PathLike) -> Rates:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot read rates file {path} ({err}); give a JSON file written by "
                              "`soundmap estimate --save-rates`") from None

    def save(self, path: str | os.PathLike) -> Path:
        from .atomic import write_text_atomic

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path


@dataclass(frozen=True)
class FetchAssumptions:
    """What the network is assumed to do (the estimate cannot measure a server it has not asked)."""

    bandwidth_mbps: float = 50.0    #: sustained download bandwidth, megabits per second
    latency_ms: float = 150.0       #: time to first byte of one tile request
    workers: int = 16               #: concurrent downloads (`soundmap tiles fetch --workers`)

    def __post_init__(self) -> None:
        if not self.bandwidth_mbps > 0 or self.latency_ms < 0 or self.workers < 1:
            raise InputError("--bandwidth-mbps must be > 0, --latency-ms >= 0 and --workers >= 1")


# ----------------------------------------------------------------------------- the estimate

@dataclass(frozen=True)
class ZoomEstimate:
    """Counts and times of one PSM zoom level."""

    zoom: int
    rows: int
    cols: int
    web_zoom: int | None
    tiles: int
    bytes: int
    fetch_s: float
    embed_s: float
    query_s: float

    @property
    def cells(self) -> int:
        return self.rows * self.cols

    @property
    def total_s(self) -> float:
        return self.fetch_s + self.embed_s + self.query_s


@dataclass(frozen=True)
class Estimate:
    """The estimate of a whole region (one entry per zoom level)."""

    bbox: Any
    source_name: str
    zooms: list[ZoomEstimate]
    rates: Rates
    fetch: FetchAssumptions
    queries: int = 1
    steps: int = 1
    notes: list[str] = field(default_factory=list)

    @property
    def total_s(self) -> float:
        return sum(z.total_s for z in self.zooms)

    def lines(self) -> list[str]:
        """The human table ``soundmap estimate`` prints."""
        out = [f"region {self.bbox.west:g},{self.bbox.south:g},{self.bbox.east:g},{self.bbox.north:g} — "
               f"source {self.source_name} — {self.queries} query × {self.steps} metadata step(s)",
               f"rates ({self.rates.device}, {self.rates.machine}): encoder {self.rates.encoder_images_per_s:.3g} img/s, "
               f"render {self.rates.render_s_per_cell * 1e3:.3g} ms/cell, fusion {self.rates.fusion_cells_per_s:.3g} cells/s",
               f"network assumed: {self.fetch.bandwidth_mbps:g} Mbit/s, {self.fetch.latency_ms:g} ms latency, "
               f"{self.fetch.workers} concurrent downloads"]
        for z in self.zooms:
            web = f"z{z.web_zoom}" if z.web_zoom is not None else "local raster"
            out.append(f"zoom {z.zoom}: {z.rows} × {z.cols} = {z.cells:,} cells; {z.tiles:,} tiles ({web}), "
                       f"{format_bytes(z.bytes)}")
            out.append(f"  fetch {format_hours(z.fetch_s)} · embed {format_hours(z.embed_s)} · "
                       f"query {format_hours(z.query_s)} · total {format_hours(z.total_s)}")
        out.append(f"total: {format_hours(self.total_s)}")
        out.extend(f"note: {note}" for note in self.notes)
        return out


def format_hours(seconds: float) -> str:
    """Hours, with a more familiar unit beside them when hours are awkward: ``0.0123 h (44 s)``."""
    hours = f"{seconds / 3600:.3g} h"
    if seconds < 120:
        return f"{hours} ({seconds:.0f} s)"
    if seconds < 7200:
        return f"{hours} ({seconds / 60:.0f} min)"
    if seconds >= 172800:
        return f"{hours} ({seconds / 86400:.1f} days)"
    return hours


def format_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


def count_grid_tiles(grid: Any, source: Any) -> tuple[int | None, int]:
    """(web zoom, number of distinct tiles) the cells of ``grid`` need, streamed chunk by chunk
    (each tile as one int64 ``x·2^z + y``, so a continental plan stays tens of MB)."""
    from .geo.tileplan import iter_grid_tiles

    codes: list[np.ndarray] = []
    web_zoom = None
    for z, xy in iter_grid_tiles(grid, source):
        web_zoom = z
        codes.append(xy[:, 0].astype(np.int64) * (1 << z) + xy[:, 1].astype(np.int64))
        if sum(len(c) for c in codes) > 8_000_000:  # keep the pending list small
            codes = [np.unique(np.concatenate(codes))]
    if not codes:
        return web_zoom, 0
    return web_zoom, int(np.unique(np.concatenate(codes)).size)


def fetch_seconds(tiles: int, bytes_total: float, rates: Rates, assumptions: FetchAssumptions) -> float:
    """The slowest of bandwidth, latency over the concurrent downloads, and local per-tile cost."""
    if tiles == 0:
        return 0.0
    bandwidth_s = bytes_total * 8 / (assumptions.bandwidth_mbps * 1e6)
    latency_s = tiles * (assumptions.latency_ms / 1000 + rates.fetch_s_per_tile) / assumptions.workers
    local_s = tiles * rates.fetch_s_per_tile
    return max(bandwidth_s, latency_s, local_s)


def embed_seconds(cells: int, rates: Rates) -> float:
    """Encoder plus rendering: added on CPU (they share the cores), overlapped on a GPU."""
    encode_s = cells / rates.encoder_images_per_s
    render_s = cells * rates.render_s_per_cell
    if rates.device == "cuda":
        return max(encode_s, render_s / max(1, rates.render_threads))
    return encode_s + render_s


def query_seconds(cells: int, rates: Rates, queries: int = 1, steps: int = 1) -> float:
    """One fusion pass per metadata step (shared by the queries), plus scoring and writing per
    band, plus the fixed cost of a query call."""
    return (rates.query_fixed_s + cells * steps / rates.fusion_cells_per_s
            + cells * queries * steps * rates.query_io_s_per_cell_band)


def estimate_region(bbox: Any, zooms: Sequence[int], source: Any, rates: Rates, *,
                    fetch: FetchAssumptions | None = None, stride: float | None = None,
                    queries: int = 1, steps: int = 1) -> Estimate:
    """Count cells and tiles of every zoom of ``bbox`` exactly and turn them into time."""
    from .geo.grid import make_grid

    fetch = fetch or FetchAssumptions()
    notes: list[str] = []
    results = []
    for zoom in zooms:
        try:
            grid = make_grid(bbox, source.family, zoom, stride=stride)
        except InputError as err:
            if "too large" not in str(err):
                raise
            grid = make_grid(bbox, source.family, zoom, stride=stride, tolerance=None)
            note = ("the bbox is too large for one grid (footprints drift > 5 %): a real run needs it split "
                    "into several bboxes; counts here are for one grid over the whole bbox and only approximate the split total")
            if note not in notes:
                notes.append(note)
        web_zoom, tiles = count_grid_tiles(grid, source) if source.is_remote else (None, 0)
        size = tiles * int(source.bytes_per_tile)
        cells = grid.rows * grid.cols
        results.append(ZoomEstimate(zoom=zoom, rows=grid.rows, cols=grid.cols, web_zoom=web_zoom, tiles=tiles,
                                    bytes=size, fetch_s=fetch_seconds(tiles, size, rates, fetch),
                                    embed_s=embed_seconds(cells, rates),
                                    query_s=query_seconds(cells, rates, queries, steps)))
    return Estimate(bbox=bbox, source_name=source.name, zooms=results, rates=rates, fetch=fetch,
                    queries=queries, steps=steps, notes=notes)


# ----------------------------------------------------------------------------- calibration

def machine_key(device: Any) -> str:
    """Identifies what the rates were measured on: CPU or GPU model, threads, torch version."""
    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{_cpu_model()} ×{torch.get_num_threads()} threads"
    return f"{name}, torch {torch.__version__}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def rates_cache_path(device: Any, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where calibrated rates of this machine and device are kept."""
    import hashlib

    from .paths import cache_dir as cache_root

    digest = hashlib.sha256(machine_key(device).encode()).hexdigest()[:12]
    return cache_root(cache_dir) / "rates" / f"{device.type}-{digest}.json"


def _timed(fn: Callable[[], Any], device: Any, repeats: int = 2) -> float:
    """Fastest of ``repeats`` timed calls after one warm-up call (device work included)."""
    import torch

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def calibrate_encoder(device: Any, batch_size: int) -> float:
    """Images/s of the released-size image encoder (random weights: same cost) on uint8 cell
    renders, preprocessing included, under the embed loop's autocast."""
    import torch

    from .models.config import ViTConfig
    from .models.vit import ImageEncoder
    from .preprocess.image import eval_transform
    from .pipeline.blocks import encoder_autocast

    encoder = ImageEncoder(ViTConfig(), 512).to(device).eval()
    images = torch.randint(0, 256, (batch_size, 256, 256, 3), dtype=torch.uint8)
    res = torch.full((batch_size,), 10.0)

    def run() -> None:
        with torch.inference_mode(), encoder_autocast(device):
            encoder(eval_transform(images, device=device), res.to(device))

    return batch_size / _timed(run, device, repeats=1 if device.type == "cpu" else 3)


def calibrate_fusion(device: Any, cells: int = CALIBRATION_FUSION_CELLS) -> float:
    """Cells/s of the released-size fusion transformer with lat/lon, month and hour given."""
    import torch

    from .models.config import FusionConfig
    from .models.fusion import MetadataFuser
    from .preprocess.metadata import Metadata

    fuser = MetadataFuser(("latlon", "month", "hour"), 512, FusionConfig()).to(device).eval()
    features = torch.randn(cells, 512, device=device)
    tokens = Metadata(lat=np.full(cells, 45.0), lon=np.full(cells, 8.0), month=6, hour=12).encode(
        cells, ("latlon", "month", "hour"))

    def run() -> None:
        with torch.inference_mode():
            fuser(features, tokens)

    return cells / _timed(run, device)


class _SyntheticTiles:
    """A tile getter answering every tile with the same JPEG (rendering cost does not depend on the
    pixels), standing in for the SQLite cache during calibration."""

    def __init__(self, tile_size: int) -> None:
        import io

        from PIL import Image

        rng = np.random.default_rng(0)
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (tile_size, tile_size, 3), dtype=np.uint8)).save(
            buffer, format="JPEG", quality=90)
        self.data = buffer.getvalue()

    def get(self, source_key: str, z: int, x: int, y: int) -> bytes | None:
        return self.data


def calibrate_render(source: Any, family: str, cells: int = CALIBRATION_RENDER_CELLS) -> float:
    """Seconds to render one zoom-1 cell from (synthetic) cached tiles, one thread."""
    from .geo.bbox import BBox
    from .geo.grid import make_grid
    from .pipeline.blocks import uses_block_renderer

    if uses_block_renderer(source, "cpu"):  # what the embed loop renders with (measured on the CPU)
        from .tiles.block_render import render_cells_torch as render_cells
    else:
        from .tiles.render import render_cells
    if not source.is_remote:
        return 0.0
    grid = make_grid(BBox(8.0, 45.0, 8.2, 45.1), family, 1)
    rows = np.arange(cells) // grid.cols % grid.rows  # row-major, as the embed loop renders a block
    cols = np.arange(cells) % grid.cols
    getter = _SyntheticTiles(int(source.tile_size))
    render_cells(grid, rows[:1], cols[:1], source, getter)  # warm-up: GDAL and PROJ set-up
    start = time.perf_counter()
    render_cells(grid, rows, cols, source, getter)
    return (time.perf_counter() - start) / cells


def calibrate_fetch(tiles: int = CALIBRATION_FETCH_TILES) -> float:
    """Local seconds per tile of the real fetcher (HTTP client, image check, SQLite commit)
    against a loopback server that answers at once, 4 downloads at a time."""
    import tempfile
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from .tiles.cache import TileCache
    from .tiles.fetch import fetch_tiles
    from .tiles.sources import TileSource

    body = _SyntheticTiles(256).data

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        source = TileSource(name="calibration", kind="xyz", url=f"http://{host}:{port}/{{z}}/{{x}}/{{y}}.jpg")
        with tempfile.TemporaryDirectory(prefix="soundmap-calibrate-") as tmp, _quiet():
            cache = TileCache(Path(tmp) / "tiles.sqlite")
            start = time.perf_counter()
            fetch_tiles(source, [(10, x, 0) for x in range(tiles)], cache, workers=4)
            seconds = time.perf_counter() - start
            cache.close()
    finally:
        server.shutdown()
        server.server_close()
    return seconds / tiles


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No progress bar for the calibration's own fetch (restoring the caller's setting)."""
    from .progress import is_quiet, set_quiet

    before = is_quiet()
    set_quiet(True)
    try:
        yield
    finally:
        set_quiet(before)


def calibrate(device: Any, source: Any, *, batch_size: int | None = None) -> Rates:
    """Measure this machine's rates (~10–30 s on CPU, a few seconds on a GPU)."""
    from .progress import info
    from .pipeline.blocks import DEFAULT_BATCH_SIZE

    info(f"calibrating rates on {device} (once per machine; cached) ...")
    batch = int(batch_size or DEFAULT_BATCH_SIZE.get(device.type, 8))
    return Rates(device=device.type, encoder_images_per_s=calibrate_encoder(device, batch),
                 render_s_per_cell=calibrate_render(source, source.family), render_threads=min(4, os.cpu_count() or 1),
                 fusion_cells_per_s=calibrate_fusion(device), fetch_s_per_tile=calibrate_fetch(),
                 machine=machine_key(device), measured_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def machine_rates(device: Any, source: Any, *, rates_file: str | os.PathLike | None = None,
                  recalibrate: bool = False, cache_dir: str | os.PathLike | None = None) -> Rates:
    """Rates from ``rates_file``, else cached for this machine and device, else calibrated now."""
    if rates_file is not None:
        return Rates.load(rates_file)
    path = rates_cache_path(device, cache_dir)
    if path.is_file() and not recalibrate:
        try:
            return Rates.load(path)
        except ConfigError:
            pass  # a damaged cache entry: measure again
    rates = calibrate(device, source)
    rates.save(path)
    return rates


def estimate(bbox: str | Any, zooms: Sequence[int], *, source: str | None = None, device: str = "auto",
             rates_file: str | os.PathLike | None = None, recalibrate: bool = False,
             fetch: FetchAssumptions | None = None, stride: float | None = None, queries: int = 1,
             steps: int = 1, tiles_config: str | os.PathLike | None = None,
             cache_dir: str | os.PathLike | None = None) -> Estimate:
    """``soundmap estimate``: parse, resolve, get rates, count and time every zoom level."""
    from .families import check_zoom
    from .geo.bbox import parse_bbox
    from .pipeline.models import resolve_device
    from .tiles.sources import resolve_source

    box = parse_bbox(bbox) if isinstance(bbox, str) else bbox
    levels = [check_zoom(int(z)) for z in zooms]
    if queries < 1 or steps < 1:
        raise InputError("--queries and --steps must be at least 1")
    tile_source = resolve_source(source, config_path=tiles_config)
    rates = machine_rates(resolve_device(device), tile_source, rates_file=rates_file, recalibrate=recalibrate,
                          cache_dir=cache_dir)
    return estimate_region(box, levels, tile_source, rates, fetch=fetch, stride=stride, queries=queries, steps=steps)
