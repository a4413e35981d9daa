"""Land-cover sources: ESA WorldCover over HTTP range requests (cached), or any local class raster.

A source answers one question: *which local, georeferenced class rasters cover this lon/lat box?*
(:meth:`LandCoverSource.rasters_for`). Reprojecting them onto cell footprints is done by
:func:`footprints_bga` (below), so that the area-weighting math never knows where pixels came
from.

WorldCover is published as 3° × 3° Cloud-Optimised GeoTIFFs (EPSG:4326, 10 m, uint8 codes, 0 =
nodata) named by their lower-left corner. We never download whole tiles (each is ~100 MB): GDAL's
``/vsicurl/`` reads only the internal blocks a window touches, through HTTP range requests. Windows
are cut on a fixed geographic lattice of :data:`CHUNK_DEG` degrees so that two runs over
overlapping regions ask for — and cache — the same chunks; a cached chunk is a small DEFLATE
GeoTIFF under ``<cache>/landcover/worldcover/<version>_<year>/<tile>/``. A tile the bucket does not
have (open ocean) answers 404 and is remembered as absent: its area is nodata.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from .. import paths
from ..atomic import atomic_path, write_text_atomic
from ..errors import InputError, TileError
from ..geo.grid import Grid
from ..progress import info, progress
from .bga import ClassWeights, bga_means, class_areas_in_rectangles, class_indices

WORLDCOVER_URL_ENV = "SOUNDMAP_WORLDCOVER_URL"
"""Environment variable overriding the WorldCover bucket (tests point it at a loopback server)."""

WORLDCOVER_DEFAULT_URL = "https://esa-worldcover.s3.eu-central-1.amazonaws.com"

WORLDCOVER_VERSIONS: dict[int, str] = {2021: "v200", 2020: "v100"}
"""WorldCover layers by year: 2021 → v200 (default), 2020 → v100."""

WORLDCOVER_TILE_DEG = 3
"""WorldCover tiles are 3° × 3°, named by their lower-left corner (multiples of 3)."""

CHUNK_DEG = 0.05
"""Side (degrees) of the cached windows: 600 × 600 WorldCover pixels (~5.5 km), ~50–300 kB each."""

WORLDCOVER_RESOLUTION_M = 10.0

METRES_PER_DEGREE = 111_320.0
"""Ground metres per degree of latitude (and of longitude at the equator), for sizing only."""

CHUNKS_PER_DEG = 20  # 1 / CHUNK_DEG, kept integral so chunk indices are exact

WORLDCOVER_ATTRIBUTION = ("© ESA WorldCover project / Contains modified Copernicus Sentinel data ({year}) "
                          "processed by ESA WorldCover consortium")


def worldcover_attribution(year: int) -> str:
    """CC BY 4.0 attribution to print beside any product derived from WorldCover."""
    return WORLDCOVER_ATTRIBUTION.format(year=year)


def worldcover_tile_name(lat0: int, lon0: int) -> str:
    """The name of the tile whose lower-left corner is (lat0, lon0): ``N51E000``, ``S03W075``."""
    ns = "N" if lat0 >= 0 else "S"
    ew = "E" if lon0 >= 0 else "W"
    return f"{ns}{abs(lat0):02d}{ew}{abs(lon0):03d}"


def worldcover_tiles(west: float, south: float, east: float, north: float) -> list[tuple[str, int, int]]:
    """``(name, lat0, lon0)`` of every 3° tile intersecting the lon/lat box (edges excluded)."""
    step = WORLDCOVER_TILE_DEG
    lat_first = math.floor(south / step) * step
    lon_first = math.floor(west / step) * step
    tiles = []
    for lat0 in range(int(lat_first), int(math.ceil(north / step) * step), step):
        for lon0 in range(int(lon_first), int(math.ceil(east / step) * step), step):
            if -90 <= lat0 < 90 and -180 <= lon0 < 180:
                tiles.append((worldcover_tile_name(lat0, lon0), lat0, lon0))
    return tiles


def worldcover_url(base_url: str, year: int, tile: str) -> str:
    """HTTPS address of a WorldCover map tile (``{base}/{version}/{year}/map/ESA_WorldCover_10m_…``)."""
    version = WORLDCOVER_VERSIONS[year]
    return f"{base_url.rstrip('/')}/{version}/{year}/map/ESA_WorldCover_10m_{year}_{version}_{tile}_Map.tif"


@dataclass(frozen=True)
class ClassRaster:
    """A local categorical raster file and the nodata value to honour when reading it."""

    path: Path
    nodata: float | None


class LandCoverSource:
    """Where class rasters come from. Subclasses: :class:`WorldCoverSource`, :class:`LocalRasterSource`."""

    description: str = ""
    attribution: str = ""

    def rasters_for(self, west: float, south: float, east: float, north: float) -> list[ClassRaster]:
        """Local class rasters covering the lon/lat box (fetching and caching whatever is needed)."""
        raise NotImplementedError

    def resolution_m(self, lat: float) -> float:
        """Approximate ground size (m) of one source pixel near latitude ``lat`` (sizes the sub-grid)."""
        raise NotImplementedError


class LocalRasterSource(LandCoverSource):
    """Any single-band categorical raster GDAL reads, in any CRS (``--landcover FILE``)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"--landcover {self.path} does not exist; give a categorical GeoTIFF")
        try:
            with rasterio.open(self.path) as src:
                if src.crs is None:
                    raise InputError(f"--landcover {self.path} has no CRS; assign one (gdal_edit.py -a_srs) and retry")
                if src.count < 1:
                    raise InputError(f"--landcover {self.path} has no bands")
                if np.dtype(src.dtypes[0]).kind not in "iu":
                    raise InputError(f"--landcover {self.path} holds {src.dtypes[0]} values; a land-cover map "
                                     "must hold integer class codes")
                self.nodata = src.nodata
                self._res = (abs(src.transform.a), abs(src.transform.e))
                self._geographic = bool(src.crs.is_geographic)
        except RasterioIOError as err:
            raise InputError(f"--landcover {self.path} is not a raster GDAL can read ({_first_line(err)})") from None
        self.description = f"local land cover {self.path.name}"
        self.attribution = ""

    def rasters_for(self, west: float, south: float, east: float, north: float) -> list[ClassRaster]:
        return [ClassRaster(self.path, self.nodata)]

    def resolution_m(self, lat: float) -> float:
        res_x, res_y = self._res
        if self._geographic:
            return min(res_x * METRES_PER_DEGREE * max(math.cos(math.radians(lat)), 0.01), res_y * METRES_PER_DEGREE)
        return min(res_x, res_y)


class WorldCoverSource(LandCoverSource):
    """ESA WorldCover 10 m, read window by window over HTTP and cached locally.

    ``base_url`` (or ``$SOUNDMAP_WORLDCOVER_URL``) replaces the public bucket, e.g. a mirror or a
    test server; ``year`` picks the layer (2021 v200 by default, 2020 v100).
    """

    def __init__(self, year: int = 2021, base_url: str | None = None,
                 cache_root: str | os.PathLike | None = None) -> None:
        if year not in WORLDCOVER_VERSIONS:
            raise InputError(f"--worldcover-year {year} is not published; use 2021 (v200) or 2020 (v100)")
        self.year = year
        self.version = WORLDCOVER_VERSIONS[year]
        self.base_url = (base_url or os.environ.get(WORLDCOVER_URL_ENV) or WORLDCOVER_DEFAULT_URL).rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise InputError(f"WorldCover URL {self.base_url!r} must start with http:// or https://")
        root = Path(cache_root) if cache_root is not None else paths.cache_dir() / "landcover"
        self.cache = root / "worldcover" / f"{self.version}_{self.year}"
        self.description = f"ESA WorldCover {self.year} {self.version}"
        self.attribution = worldcover_attribution(year)

    # -- cache layout -------------------------------------------------------------------------
    def chunk_path(self, tile: str, row: int, col: int) -> Path:
        """Cached window ``(row, col)`` (chunk lattice counted from the tile's lower-left corner)."""
        return self.cache / tile / f"r{row:03d}_c{col:03d}.tif"

    def absent_marker(self, tile: str) -> Path:
        return self.cache / tile / "ABSENT"

    def resolution_m(self, lat: float) -> float:
        return WORLDCOVER_RESOLUTION_M

    # -- reading --------------------------------------------------------------------------------
    def rasters_for(self, west: float, south: float, east: float, north: float) -> list[ClassRaster]:
        out: list[ClassRaster] = []
        for tile, lat0, lon0 in worldcover_tiles(west, south, east, north):
            if self.absent_marker(tile).exists():
                continue
            chunks = list(_chunks_in_tile(lat0, lon0, west, south, east, north))
            missing = [(r, c) for r, c in chunks if not self.chunk_path(tile, r, c).exists()]
            if missing and not self._fetch_chunks(tile, lat0, lon0, missing):
                continue
            out.extend(ClassRaster(self.chunk_path(tile, r, c), 0) for r, c in chunks
                       if self.chunk_path(tile, r, c).exists())
        return out

    def _fetch_chunks(self, tile: str, lat0: int, lon0: int, chunks: Sequence[tuple[int, int]]) -> bool:
        """Read the missing windows of one tile over HTTP and cache them; False if the tile does not exist."""
        url = worldcover_url(self.base_url, self.year, tile)
        try:
            with rasterio.Env(**_VSICURL_OPTIONS), rasterio.open(f"/vsicurl/{url}") as src:
                for row, col in progress(chunks, desc=f"WorldCover {tile}", unit="window"):
                    _cache_window(src, _chunk_bounds(lat0, lon0, row, col), self.chunk_path(tile, row, col))
        except RasterioIOError as err:
            # GDAL words "no such object" and "no server" alike; ask the server itself which it was.
            if http_status(url) == 404:
                info(f"WorldCover has no tile {tile} (open ocean?): its area is nodata")
                self.absent_marker(tile).parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(self.absent_marker(tile), url + "\n")
                return False
            raise TileError(f"could not read WorldCover tile {tile} from {url} ({_first_line(err)}); check "
                            f"the network or set {WORLDCOVER_URL_ENV} to a mirror") from None
        return True


def http_status(url: str, timeout: float = 20.0) -> int | None:
    """Status code of a HEAD request for ``url`` (None when the server cannot be reached)."""
    import requests

    try:
        return requests.head(url, timeout=timeout, allow_redirects=True).status_code
    except requests.RequestException:
        return None


_VSICURL_OPTIONS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",   # do not list the bucket "directory" on open
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif",
    "GDAL_HTTP_MAX_RETRY": "4",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_TIMEOUT": "60",
    "GDAL_HTTP_CONNECTTIMEOUT": "20",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_PAM_ENABLED": "NO",
}


def _chunks_in_tile(lat0: int, lon0: int, west: float, south: float, east: float,
                    north: float) -> Iterator[tuple[int, int]]:
    """Chunk indices ``(row from the south, col from the west)`` of one tile that the box touches."""
    n = WORLDCOVER_TILE_DEG * CHUNKS_PER_DEG
    col_first = max(0, math.floor((west - lon0) * CHUNKS_PER_DEG))
    col_last = min(n - 1, math.ceil((east - lon0) * CHUNKS_PER_DEG) - 1)
    row_first = max(0, math.floor((south - lat0) * CHUNKS_PER_DEG))
    row_last = min(n - 1, math.ceil((north - lat0) * CHUNKS_PER_DEG) - 1)
    for row in range(row_first, row_last + 1):
        for col in range(col_first, col_last + 1):
            yield row, col


def _chunk_bounds(lat0: int, lon0: int, row: int, col: int) -> tuple[float, float, float, float]:
    """(west, south, east, north) of one cached chunk."""
    return (lon0 + col / CHUNKS_PER_DEG, lat0 + row / CHUNKS_PER_DEG,
            lon0 + (col + 1) / CHUNKS_PER_DEG, lat0 + (row + 1) / CHUNKS_PER_DEG)


def _covering_window(transform: rasterio.Affine, width: int, height: int,
                     bounds: tuple[float, float, float, float]) -> Window | None:
    """The pixel window covering ``bounds`` (outward to whole pixels, so neighbouring chunks leave
    no gap), clipped to the raster; None when they do not overlap."""
    west, south, east, north = bounds
    eps = 1e-6
    col0 = max(0, math.floor((west - transform.c) / transform.a + eps))
    col1 = min(width, math.ceil((east - transform.c) / transform.a - eps))
    row0 = max(0, math.floor((north - transform.f) / transform.e + eps))
    row1 = min(height, math.ceil((south - transform.f) / transform.e - eps))
    if col1 <= col0 or row1 <= row0:
        return None
    return Window(col0, row0, col1 - col0, row1 - row0)


def _cache_window(src: rasterio.io.DatasetReader, bounds: tuple[float, float, float, float], dest: Path) -> None:
    """Read the pixels of ``bounds`` from an open (remote) raster and store them as a small GeoTIFF."""
    window = _covering_window(src.transform, src.width, src.height, bounds)
    profile = {"driver": "GTiff", "count": 1, "dtype": src.dtypes[0], "crs": src.crs,
               "nodata": src.nodata if src.nodata is not None else 0, "compress": "deflate"}
    if window is None:
        data = np.zeros((1, 1), dtype=src.dtypes[0])
        transform = rasterio.transform.from_bounds(*bounds, 1, 1)
    else:
        data = src.read(1, window=window)
        transform = src.window_transform(window)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest, suffix=".tmp.tif") as tmp:
        with rasterio.open(tmp, "w", width=data.shape[1], height=data.shape[0], transform=transform,
                           **profile) as out:
            out.write(data, 1)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# --------------------------------------------------------------------------- area-weighted BGA
OVERSAMPLE = 1
"""Sub-grid pixels per source pixel side. With nearest resampling a class edge moves by at most
half a sub-pixel, so a class's share of a footprint of side F is off by at most ~2·s/F per edge
crossing it (errors of opposite edges cancel on average): under 0.5 % for a 2.56 km Sentinel cell
on 10 m WorldCover. 2 halves that bound for 4× the reprojection time."""

MIN_SUBPIXELS = 64
"""At least this many sub-grid pixels along a footprint side, however coarse the source."""

BLOCK_PIXELS = 2048 * 2048
"""Largest sub-grid reprojected at once (≈ 64 MB: int32 classes and indices, int64 bin labels)."""

SUBGRID_NODATA = -1


@dataclass
class FootprintBGA:
    """BGA means of N footprints: ``values`` 3 × N (A, B, G; NaN = no valid land cover) and the
    fraction of each footprint covered by valid (weighted) classes; ``unmapped`` counts sub-grid
    pixels of codes the table does not know."""

    values: np.ndarray
    valid_fraction: np.ndarray
    unmapped: dict[int, int]


def subgrid_resolution(source_res_m: float, footprint_m: float, stride_m: float | None = None) -> float:
    """Sub-grid pixel size: at most ``1/OVERSAMPLE`` source pixel and ``footprint/MIN_SUBPIXELS``,
    chosen to divide the footprint (and the stride when possible) into whole sub-pixels."""
    largest = min(source_res_m / OVERSAMPLE, footprint_m / MIN_SUBPIXELS)
    first = max(1, math.ceil(footprint_m / largest - 1e-9))
    if stride_m:
        for n in range(first, 4 * first + 1):
            steps = stride_m * n / footprint_m
            if abs(steps - round(steps)) < 1e-6:
                return footprint_m / n
    return footprint_m / first


def footprints_bga(source: LandCoverSource, table: ClassWeights, crs: str, minx: np.ndarray, miny: np.ndarray,
                   maxx: np.ndarray, maxy: np.ndarray, resolution: float) -> FootprintBGA:
    """Area-weighted BGA of rectangular footprints given in ``crs`` (one sub-grid covering them all).

    Why this method: the categorical land cover is reprojected with *nearest* onto a fine sub-grid
    in the footprints' own CRS (pixels ≤ one source pixel, see :data:`OVERSAMPLE`), so every sub-pixel
    keeps a real class — no averaging across classes before the weights are applied, and any source
    CRS works, because GDAL's warper does the geometry. Each footprint's weighted sums are then
    exact class areas of the sub-grid (:func:`class_areas_in_rectangles`, partial sub-pixels by
    area), so footprints need not align with the sub-grid and may overlap (stride < footprint).
    Averaging one-hot masks with GDAL's ``average`` resampling would instead need one output pixel
    per footprint — impossible when footprints overlap — and one warp per class.
    """
    from rasterio.warp import Resampling, reproject, transform_bounds

    minx, miny, maxx, maxy = (np.asarray(a, dtype=np.float64) for a in (minx, miny, maxx, maxy))
    # The sub-grid starts at the footprints' outer edge: with a resolution that divides footprint
    # and stride (subgrid_resolution), every footprint edge is a sub-pixel edge, so land cover drawn
    # on the cell grid is counted exactly, without slivers from neighbouring cells.
    ox, oy = float(minx.min()), float(maxy.max())
    width = max(1, math.ceil((float(maxx.max()) - ox) / resolution - 1e-9))
    height = max(1, math.ceil((oy - float(miny.min())) / resolution - 1e-9))
    transform = rasterio.Affine(resolution, 0.0, ox, 0.0, -resolution, oy)
    west, south, east, north = transform_bounds(crs, "EPSG:4326", ox, oy - height * resolution,
                                                ox + width * resolution, oy, densify_pts=21)
    margin = 1e-3  # degrees: source pixels just outside still feed nearest resampling at the edge
    classes = np.full((height, width), SUBGRID_NODATA, dtype=np.int32)
    for raster in source.rasters_for(west - margin, south - margin, east + margin, north + margin):
        with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(raster.path) as src:
            reproject(rasterio.band(src, 1), classes, src_nodata=raster.nodata, dst_transform=transform,
                      dst_crs=crs, dst_nodata=SUBGRID_NODATA, resampling=Resampling.nearest,
                      init_dest_nodata=False)
    u0, u1 = (minx - ox) / resolution, (maxx - ox) / resolution
    v0, v1 = (oy - maxy) / resolution, (oy - miny) / resolution
    index, weights, _ = class_indices(classes, table)
    areas = class_areas_in_rectangles(index, len(weights), u0, v0, u1, v1)   # N × K
    area = areas.sum(axis=1)
    sums = (areas @ weights).T                                              # 3 × N
    box_area = (u1 - u0) * (v1 - v0)
    return FootprintBGA(values=bga_means(sums, area), valid_fraction=np.clip(area / box_area, 0.0, 1.0),
                        unmapped=_unmapped_counts(classes, table))


def _unmapped_counts(classes: np.ndarray, table: ClassWeights) -> dict[int, int]:
    """Sub-grid pixel counts of codes present but neither weighted nor declared nodata."""
    present = classes[classes >= 0]
    if present.size == 0:
        return {}
    if int(present.max()) <= 65535:
        counts = np.bincount(present.ravel())
        codes = np.flatnonzero(counts)
        counts = counts[codes]
    else:  # sparse huge codes (int32 rasters): avoid a giant bincount
        codes, counts = np.unique(present, return_counts=True)
    known = set(table.weights) | set(table.nodata)
    return {int(code): int(n) for code, n in zip(codes.tolist(), counts.tolist()) if code not in known}


@dataclass
class GridBGA:
    """The BGA composite of a grid: ``values`` 3 × rows × cols float32 (NaN = nodata)."""

    values: np.ndarray
    valid_fraction: np.ndarray
    unmapped: dict[int, int]


def grid_bga(grid: Grid, source: LandCoverSource, table: ClassWeights, mask: np.ndarray | None = None) -> GridBGA:
    """Area-weighted BGA of every cell footprint (``Grid.cells_bounds``) of ``grid``.

    Cells are processed in square blocks whose sub-grid stays under :data:`BLOCK_PIXELS`, so
    memory is flat however large the region is. With ``mask`` (rows × cols bool, e.g. the
    workspace's AOI) only its True cells are computed; the others stay nodata, as in query outputs,
    and blocks without any are neither fetched nor read.
    """
    _, lat = grid.centers_lonlat(np.array([grid.rows // 2]), np.array([grid.cols // 2]))
    resolution = subgrid_resolution(source.resolution_m(float(lat[0])), grid.footprint, grid.stride)
    side_px = math.sqrt(BLOCK_PIXELS)
    per_block = max(1, int((side_px * resolution - grid.footprint) // grid.stride) + 1)
    values = np.full((3, grid.rows, grid.cols), np.nan, dtype=np.float32)
    valid_fraction = np.zeros((grid.rows, grid.cols), dtype=np.float32)
    unmapped: dict[int, int] = {}
    blocks = [(r, c) for r in range(0, grid.rows, per_block) for c in range(0, grid.cols, per_block)]
    for r0, c0 in progress(blocks, desc="land cover → BGA", unit="block"):
        rows, cols = np.meshgrid(np.arange(r0, min(r0 + per_block, grid.rows)),
                                 np.arange(c0, min(c0 + per_block, grid.cols)), indexing="ij")
        rows, cols = rows.ravel(), cols.ravel()
        if mask is not None:
            keep = mask[rows, cols]
            rows, cols = rows[keep], cols[keep]
            if rows.size == 0:
                continue
        result = footprints_bga(source, table, grid.crs, *grid.cells_bounds(rows, cols), resolution=resolution)
        values[:, rows, cols] = result.values
        valid_fraction[rows, cols] = result.valid_fraction
        for code, count in result.unmapped.items():
            unmapped[code] = unmapped.get(code, 0) + count
    return GridBGA(values=values, valid_fraction=valid_fraction, unmapped=unmapped)


def points_bga(lons: Sequence[float], lats: Sequence[float], footprint_m: float, source: LandCoverSource,
               table: ClassWeights) -> FootprintBGA:
    """Area-weighted BGA of square footprints (side ``footprint_m``) centred on lon/lat points.

    Each point gets its own Lambert azimuthal equal-area CRS centred on it, so a footprint is a true
    ground square wherever the points are (recordings may span several cities).
    """
    lons = np.asarray(lons, dtype=np.float64)
    lats = np.asarray(lats, dtype=np.float64)
    values = np.full((3, lons.size), np.nan)
    valid_fraction = np.zeros(lons.size)
    unmapped: dict[int, int] = {}
    half = footprint_m / 2.0
    for i in progress(range(lons.size), desc="land cover at recordings", unit="site"):
        crs = f"+proj=laea +lat_0={lats[i]:.8f} +lon_0={lons[i]:.8f} +x_0=0 +y_0=0 +datum=WGS84 +units=m +no_defs"
        resolution = subgrid_resolution(source.resolution_m(float(lats[i])), footprint_m)
        box = np.array([-half]), np.array([-half]), np.array([half]), np.array([half])
        result = footprints_bga(source, table, crs, *box, resolution=resolution)
        values[:, i] = result.values[:, 0]
        valid_fraction[i] = result.valid_fraction[0]
        for code, count in result.unmapped.items():
            unmapped[code] = unmapped.get(code, 0) + count
    return FootprintBGA(values=values, valid_fraction=valid_fraction, unmapped=unmapped)
