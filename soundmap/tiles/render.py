"""Cell renderer: the image of one grid cell, as the model must see it.

A cell is a square footprint in the grid CRS rendered at the family's ``tile_px × tile_px``. For
XYZ/quadkey sources the cached web-mercator tiles around it are mosaicked and warped into the
footprint; for ``kind: file`` sources only the window of the raster under the footprint is read
(from an overview when the cell is much coarser than the raster) and warped. Either way the warp
carries an alpha band, so any pixel without imagery (a tile missing from the cache, a region
outside the raster or beyond the poles, a transparent tile) makes the cell *invalid*; invalid
cells are flagged, never filled with made-up pixels.

:func:`render_cells` is called per batch of 64–256 cells by the embedding workers: each tile is
decoded at most once per batch while memory allows (decoded tiles are dropped after the last cell
that needs them and the decoded set is capped by ``max_decoded_mb``).
"""

from __future__ import annotations

import io
import math
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from affine import Affine
from PIL import Image, UnidentifiedImageError
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject

from ..errors import TileError
from ..geo.grid import Grid
from ..geo.tileplan import cell_tile_outlines, ground_resolution, tile_ranges, touched_tiles, web_mercator_zoom

WEB_MERCATOR_HALF_WORLD_M = 20037508.342789244
"""Half the width of the web-mercator world in metres (π × 6378137)."""

MARGIN_CELL_PX = 3
"""Cell pixels of imagery read beyond the footprint, so cubic/bilinear kernels at the cell edge
see real neighbours (when they are cached) instead of an edge."""

DEFAULT_RESAMPLING = Resampling.cubic
"""Cubic (GDAL scales the kernel when downsampling, i.e. antialiased), like the reference's
bicubic-antialias resize of its training crops."""


class TileGetter(Protocol):
    """What the renderer needs of :class:`soundmap.tiles.cache.TileCache`."""

    def get(self, source_key: str, z: int, x: int, y: int) -> bytes | None: ...


@dataclass
class CellImage:
    """One rendered cell: pixels plus the georeference they carry (rio-tiler style)."""

    pixels: np.ndarray                                  # H × W × 3 uint8
    bounds: tuple[float, float, float, float]           # (minx, miny, maxx, maxy) in ``crs`` metres
    crs: str

    @property
    def transform(self) -> Affine:
        """Affine of ``pixels`` in ``crs``."""
        minx, miny, maxx, maxy = self.bounds
        h, w = self.pixels.shape[:2]
        return Affine((maxx - minx) / w, 0.0, minx, 0.0, -(maxy - miny) / h, maxy)


@lru_cache(maxsize=64)
def _crs(text: str) -> CRS:
    return CRS.from_user_input(text)


def _as_indices(rows: Any, cols: Any) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(rows, dtype=np.int64).ravel()
    c = np.asarray(cols, dtype=np.int64).ravel()
    if r.shape != c.shape:
        raise ValueError("rows and cols must have the same length")
    return r, c


def warp_to_cell(rgba: np.ndarray, src_transform: Affine, src_crs: CRS, grid: Grid, row: int, col: int,
                 resampling: Resampling) -> tuple[np.ndarray, bool]:
    """Warp a 4-band (RGB + alpha) source array into cell (row, col); (H×W×3 uint8, every pixel covered)."""
    size = grid.tile_px
    dst = np.zeros((4, size, size), dtype=np.uint8)
    reproject(rgba, dst, src_transform=src_transform, src_crs=src_crs,
              dst_transform=grid.cell_transform(row, col), dst_crs=_crs(grid.crs),
              resampling=resampling, src_alpha=4, dst_alpha=4)
    covered = bool(dst[3].min() > 0)
    return np.ascontiguousarray(np.moveaxis(dst[:3], 0, -1)), covered


# -- web-mercator tiles -------------------------------------------------------------------------


def decode_tile(data: bytes, tile_size: int, *, add_alpha: bool = True) -> np.ndarray | None:
    """Tile bytes → tile_size × tile_size × 4 uint8 (RGB + alpha); None if undecodable.

    ``add_alpha=False`` returns an opaque tile as its 3 RGB bands (no copy to add an alpha band;
    the block renderer marks opaque tiles itself). A tile of another size than the source
    declares is a configuration error (its pixels would land in the wrong place), so it raises
    :class:`TileError`.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            if image.mode == "RGB" and not has_alpha:
                image.load()
                array = np.asarray(image)
            else:
                array = np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    if array.shape[0] != tile_size or array.shape[1] != tile_size:
        raise TileError(f"a cached tile is {array.shape[1]}×{array.shape[0]} px but the source says "
                        f"tile_size {tile_size}; fix tile_size in tiles.yaml")
    if array.shape[2] == 3 and add_alpha:
        array = np.concatenate([array, np.full(array.shape[:2] + (1,), 255, np.uint8)], axis=2)
    return array


def read_cached_tile(cache: Any, source_key: str, tile: tuple[int, int, int], tile_size: int, *,
                     add_alpha: bool = True) -> np.ndarray | None:
    """A cached tile decoded (see :func:`decode_tile`), None when absent or undecodable; an
    undecodable one is deleted from the cache on the way (:func:`forget_undecodable_tile`). The one
    read path of both renderers."""
    data = cache.get(source_key, *tile)
    if data is None:
        return None
    decoded = decode_tile(data, tile_size, add_alpha=add_alpha)
    if decoded is None:
        forget_undecodable_tile(cache, source_key, tile)
    return decoded


def forget_undecodable_tile(cache: Any, source_key: str, tile: tuple[int, int, int]) -> None:
    """Delete a cached tile that no longer decodes (a damaged row), so that the next
    ``soundmap tiles fetch`` sees it missing and downloads it again; otherwise embed would say
    "fetch the tiles" and fetch would find them all cached, for ever."""
    delete = getattr(cache, "delete", None)
    if delete is not None:
        delete(source_key, [tile])


class _DecodedTiles:
    """Decoded tiles of one batch: decoded once, dropped after their last use, capped in bytes."""

    def __init__(self, cache: TileGetter, source_key: str, z: int, tile_size: int,
                 last_use: dict[tuple[int, int], int], max_bytes: int) -> None:
        self.cache, self.source_key, self.z, self.tile_size = cache, source_key, z, tile_size
        self.last_use, self.max_bytes = last_use, max_bytes
        self.tiles: OrderedDict[tuple[int, int], np.ndarray | None] = OrderedDict()
        self.nbytes = 0
        self.decodes = 0

    def get(self, x: int, y: int) -> np.ndarray | None:
        """Tile (x, y) (x unwrapped: taken modulo 2^z) or None when absent, undecodable or off the map."""
        key = (x, y)
        if key in self.tiles:
            self.tiles.move_to_end(key)
            return self.tiles[key]
        n = 1 << self.z
        tile = None
        if 0 <= y < n:
            tile = read_cached_tile(self.cache, self.source_key, (self.z, x % n, y), self.tile_size)
            self.decodes += 1
        self.tiles[key] = tile
        self.nbytes += tile.nbytes if tile is not None else 0
        return tile

    def release(self, cell_index: int, keep: set[tuple[int, int]]) -> None:
        """Drop tiles no later cell needs, then the oldest ones while over the byte cap."""
        for key in [k for k in self.tiles if self.last_use.get(k, -1) <= cell_index]:
            self._drop(key)
        while self.nbytes > self.max_bytes:
            key = next((k for k in self.tiles if k not in keep), None)
            if key is None:
                break
            self._drop(key)

    def _drop(self, key: tuple[int, int]) -> None:
        tile = self.tiles.pop(key)
        self.nbytes -= tile.nbytes if tile is not None else 0


def _mosaic(tiles: _DecodedTiles, x_lo: int, x_hi: int, y_lo: int, y_hi: int) -> np.ndarray:
    """4 × H × W mosaic of tiles x_lo..x_hi × y_lo..y_hi (alpha 0 where a tile is absent)."""
    size = tiles.tile_size
    out = np.zeros((4, (y_hi - y_lo + 1) * size, (x_hi - x_lo + 1) * size), dtype=np.uint8)
    for y in range(y_lo, y_hi + 1):
        for x in range(x_lo, x_hi + 1):
            tile = tiles.get(x, y)
            if tile is not None:
                r0, c0 = (y - y_lo) * size, (x - x_lo) * size
                out[:, r0:r0 + size, c0:c0 + size] = np.moveaxis(tile, -1, 0)
    return out


def tile_mosaic_transform(z: int, x_lo: int, y_lo: int, tile_size: int) -> Affine:
    """EPSG:3857 affine of a mosaic whose upper-left tile is (x_lo, y_lo) at zoom z."""
    span = 2.0 * WEB_MERCATOR_HALF_WORLD_M / (1 << z)
    px = span / tile_size
    return Affine(px, 0.0, -WEB_MERCATOR_HALF_WORLD_M + x_lo * span, 0.0, -px, WEB_MERCATOR_HALF_WORLD_M - y_lo * span)


def mosaic_georeference(z: int, x_lo: int, x_hi: int, y_lo: int, tile_size: int) -> tuple[Affine, CRS]:
    """(transform, CRS) of a tile mosaic; x indices may run past the antimeridian (unwrapped).

    Inside the world it is plain EPSG:3857. A mosaic astride ±180° gets a web-mercator CRS
    centred on its own longitude, so the warp sees one contiguous image instead of two halves
    at opposite ends of the world.
    """
    n = 1 << z
    transform = tile_mosaic_transform(z, x_lo, y_lo, tile_size)
    if 0 <= x_lo and x_hi < n:
        return transform, _crs("EPSG:3857")
    centre_lon = ((x_lo + x_hi + 1) / 2.0) / n * 360.0 - 180.0          # unwrapped, may exceed ±180
    shift_m = centre_lon / 180.0 * WEB_MERCATOR_HALF_WORLD_M
    lon_0 = (centre_lon + 180.0) % 360.0 - 180.0
    crs = _crs(f"+proj=webmerc +lat_0=0 +lon_0={lon_0!r} +x_0=0 +y_0=0 +k=1 +units=m +datum=WGS84 +no_defs")
    return Affine.translation(-shift_m, 0.0) @ transform, crs


def _render_from_tiles(grid: Grid, r: np.ndarray, c: np.ndarray, source: Any, cache: TileGetter,
                       resampling: Resampling, max_bytes: int, out: np.ndarray, valid: np.ndarray) -> int:
    """Render cells from cached XYZ/quadkey tiles into ``out``/``valid``; returns the number of tile decodes."""
    z = web_mercator_zoom(source, grid)
    tile_size = int(source.tile_size)
    tx, ty = cell_tile_outlines(grid, r, c, z)
    cell_idx, tile_x, tile_y = touched_tiles(tx, ty)
    _, lat = grid.centers_lonlat(r, c)
    tile_ground_m = tile_size * ground_resolution(z, lat, tile_size)
    margin = MARGIN_CELL_PX * grid.resolution_m / tile_ground_m
    x_lo, x_hi, y_lo, y_hi = tile_ranges(tx, ty, margin)
    needed: list[set[tuple[int, int]]] = [set() for _ in range(r.size)]
    for i, x, y in zip(cell_idx.tolist(), tile_x.tolist(), tile_y.tolist()):
        needed[i].add((x, y))
    last_use: dict[tuple[int, int], int] = {}
    for i in range(r.size):
        for y in range(int(y_lo[i]), int(y_hi[i]) + 1):
            for x in range(int(x_lo[i]), int(x_hi[i]) + 1):
                last_use[(x, y)] = i
    tiles = _DecodedTiles(cache, source.cache_key, z, tile_size, last_use, max_bytes)
    for i in range(r.size):
        if all(tiles.get(x, y) is not None for x, y in needed[i]):     # else: invalid, skip the warp
            mosaic = _mosaic(tiles, int(x_lo[i]), int(x_hi[i]), int(y_lo[i]), int(y_hi[i]))
            transform, src_crs = mosaic_georeference(z, int(x_lo[i]), int(x_hi[i]), int(y_lo[i]), tile_size)
            pixels, covered = warp_to_cell(mosaic, transform, src_crs, grid, int(r[i]), int(c[i]), resampling)
            if covered:
                out[i], valid[i] = pixels, True
            del mosaic
        keep = {(x, y) for y in range(int(y_lo[i]), int(y_hi[i]) + 1) for x in range(int(x_lo[i]), int(x_hi[i]) + 1)}
        tiles.release(i, keep)
    return tiles.decodes


# -- local rasters --------------------------------------------------------------------------------


def check_raster_source(source: Any) -> None:
    """TileError (one line) unless a ``kind: file`` source opens as a usable raster: checked when
    the workspace is fetched, so a wrong file is named then, not hours later by embed."""
    _open_raster(str(source.url)).close()


def _open_raster(path: str) -> Any:
    """Open a ``kind: file`` raster, with one-line errors for what users can fix."""
    import rasterio
    from rasterio.errors import RasterioIOError

    if "://" not in path and not path.startswith("/vsi"):
        local = Path(path).expanduser()
        if not local.exists():
            raise TileError(f"raster {path} does not exist; check the source path")
        path = str(local)
    try:
        dataset = rasterio.open(path)
    except RasterioIOError as err:
        raise TileError(f"raster {path} cannot be read ({str(err).splitlines()[0]})") from None
    if dataset.crs is None:
        dataset.close()
        raise TileError(f"raster {path} has no CRS; georeference it first (e.g. gdal_translate -a_srs)")
    if dataset.count == 2:
        dataset.close()
        raise TileError(f"raster {path} has {dataset.count} bands; give an RGB (3-band) or grey (1-band) raster")
    if dataset.dtypes[0] != "uint8":
        dataset.close()
        raise TileError(f"raster {path} is {dataset.dtypes[0]}; give an 8-bit RGB raster (e.g. a true-colour/TCI product)")
    return dataset


def _raster_window(dataset: Any, grid: Grid, row: int, col: int) -> tuple[Any, int] | None:
    """(window, decimation) of the raster under cell (row, col) plus a margin; None if off the raster."""
    from rasterio.warp import transform_bounds
    from rasterio.windows import Window, from_bounds

    minx, miny, maxx, maxy = grid.cell_bounds(row, col)
    bounds = transform_bounds(_crs(grid.crs), dataset.crs, minx, miny, maxx, maxy, densify_pts=21)
    if not all(math.isfinite(v) for v in bounds):
        return None
    window = from_bounds(*bounds, transform=dataset.transform)
    size = max(min(window.width, window.height), 1e-9)
    decimation = max(1, int(size / grid.tile_px))
    pad = MARGIN_CELL_PX * size / grid.tile_px + 2
    col_off = max(0, math.floor(window.col_off - pad))
    row_off = max(0, math.floor(window.row_off - pad))
    col_end = min(dataset.width, math.ceil(window.col_off + window.width + pad))
    row_end = min(dataset.height, math.ceil(window.row_off + window.height + pad))
    if col_end <= col_off or row_end <= row_off:
        return None
    return Window(col_off, row_off, col_end - col_off, row_end - row_off), decimation


def _read_rgba(dataset: Any, window: Any, decimation: int) -> tuple[np.ndarray, Affine]:
    """4 × h × w RGB+alpha of ``window`` (decimated via overviews when coarser) and its transform."""
    height = max(1, math.ceil(window.height / decimation))
    width = max(1, math.ceil(window.width / decimation))
    indexes = [1, 2, 3] if dataset.count >= 3 else [1, 1, 1]
    rgb = dataset.read(indexes, window=window, out_shape=(3, height, width), resampling=Resampling.average)
    mask = dataset.read_masks(1, window=window, out_shape=(height, width), resampling=Resampling.nearest)
    rgba = np.concatenate([rgb, mask[None]], axis=0)
    transform = (dataset.transform @ Affine.translation(window.col_off, window.row_off)
                 @ Affine.scale(window.width / width, window.height / height))
    return rgba, transform


def _render_from_raster(grid: Grid, r: np.ndarray, c: np.ndarray, source: Any, resampling: Resampling,
                        out: np.ndarray, valid: np.ndarray) -> None:
    """Render cells straight from a GeoTIFF/COG/VRT in any CRS into ``out``/``valid``."""
    with _open_raster(str(source.url)) as dataset:
        for i in range(r.size):
            found = _raster_window(dataset, grid, int(r[i]), int(c[i]))
            if found is None:
                continue
            rgba, transform = _read_rgba(dataset, *found)
            pixels, covered = warp_to_cell(rgba, transform, dataset.crs, grid, int(r[i]), int(c[i]), resampling)
            if covered:
                out[i], valid[i] = pixels, True


# -- public API -----------------------------------------------------------------------------------


def render_cells(grid: Grid, rows: Any, cols: Any, source: Any, cache: TileGetter | None, *,
                 resampling: Resampling = DEFAULT_RESAMPLING,
                 max_decoded_mb: float = 256.0) -> tuple[np.ndarray, np.ndarray]:
    """Images of cells (rows[i], cols[i]): (N × H × W × 3 uint8, valid mask (N,) bool), H = W = tile_px.

    A cell is valid only when every pixel has imagery; invalid cells are all zeros. ``cache`` may
    be None for ``kind: file`` sources. Give cells in row-major order for the fewest tile decodes.
    """
    r, c = _as_indices(rows, cols)
    if r.size and (r.min() < 0 or c.min() < 0 or r.max() >= grid.rows or c.max() >= grid.cols):
        raise IndexError(f"cell indices outside the {grid.rows}×{grid.cols} grid")
    size = grid.tile_px
    out = np.zeros((r.size, size, size, 3), dtype=np.uint8)
    valid = np.zeros(r.size, dtype=bool)
    if r.size == 0:
        return out, valid
    if source.kind == "file":
        _render_from_raster(grid, r, c, source, resampling, out, valid)
    elif source.kind in ("xyz", "quadkey"):
        if cache is None:
            raise ValueError("a tile cache is needed to render xyz/quadkey sources")
        _render_from_tiles(grid, r, c, source, cache, resampling, int(max_decoded_mb * 2**20), out, valid)
    else:
        raise TileError(f"source {getattr(source, 'name', source)!r} has unknown kind {source.kind!r}")
    return out, valid


def render_cell(grid: Grid, row: int, col: int, source: Any, cache: TileGetter | None, *,
                resampling: Resampling = DEFAULT_RESAMPLING) -> CellImage:
    """The image of one cell with its georeference; :class:`TileError` when imagery is missing."""
    pixels, valid = render_cells(grid, [row], [col], source, cache, resampling=resampling)
    if not valid[0]:
        where = "outside the raster" if source.kind == "file" else "not all in the tile cache"
        raise TileError(f"imagery for cell ({row}, {col}) is {where}; run `soundmap tiles fetch` "
                        "for this region or pick a cell inside the imagery")
    return CellImage(pixels=pixels[0], bounds=grid.cell_bounds(row, col), crs=grid.crs)


# -- a whole area, for map backgrounds ------------------------------------------------------------

AREA_MAX_TILES = 400
"""Most cached tiles mosaicked for one area image (~100 MB decoded); larger areas get none."""


def render_area(grid: Grid, crs: str, transform: Affine, shape: tuple[int, int], source: Any,
                cache: TileGetter | None, *, max_tiles: int = AREA_MAX_TILES) -> tuple[np.ndarray, np.ndarray] | None:
    """The imagery under a raster of ``shape`` (rows, cols) with ``transform`` in ``crs``, as
    (rows × cols × 3 uint8, covered mask), from the same tiles the cells were rendered from
    (``grid``'s web-mercator zoom) or the same raster; averaged when downsampling. None when the
    area needs more than ``max_tiles`` tiles (a map background must stay cheap)."""
    from rasterio.warp import transform_bounds

    height, width = shape
    dst = np.zeros((4, height, width), dtype=np.uint8)
    if source.kind == "file":
        with _open_raster(str(source.url)) as dataset:
            indexes = [1, 2, 3] if dataset.count >= 3 else [1, 1, 1]
            reproject(np.concatenate([dataset.read(indexes), dataset.read_masks(1)[None]]), dst,
                      src_transform=dataset.transform, src_crs=dataset.crs, dst_transform=transform,
                      dst_crs=_crs(crs), resampling=Resampling.average, src_alpha=4, dst_alpha=4)
    elif source.kind in ("xyz", "quadkey") and cache is not None:
        import mercantile

        z = web_mercator_zoom(source, grid)
        west, south, east, north = transform_bounds(
            _crs(crs), _crs("EPSG:4326"), transform.c, transform.f + transform.e * height,
            transform.c + transform.a * width, transform.f, densify_pts=21)
        corners = [mercantile.tile(west, north, z), mercantile.tile(min(east, 179.999999), max(south, -85.0), z)]
        x_lo, y_lo = corners[0].x, corners[0].y
        x_hi, y_hi = corners[1].x, corners[1].y
        if (x_hi - x_lo + 1) * (y_hi - y_lo + 1) > max_tiles:
            return None
        tiles = _DecodedTiles(cache, source.cache_key, z, int(source.tile_size), {}, 2**62)
        mosaic = _mosaic(tiles, x_lo, x_hi, y_lo, y_hi)
        src_transform, src_crs = mosaic_georeference(z, x_lo, x_hi, y_lo, int(source.tile_size))
        reproject(mosaic, dst, src_transform=src_transform, src_crs=src_crs, dst_transform=transform,
                  dst_crs=_crs(crs), resampling=Resampling.average, src_alpha=4, dst_alpha=4)
    else:
        return None
    return np.ascontiguousarray(np.moveaxis(dst[:3], 0, -1)), dst[3] > 0


def area_imagery(source: Any, cache: TileGetter | None) -> Any:
    """``imagery(grid, crs, transform, shape)`` → :func:`render_area`'s answer, or None when the
    imagery cannot be read: what the query engine draws its quick-looks over."""
    def imagery(grid: Grid, crs: str, transform: Affine, shape: tuple[int, int]) -> Any:
        try:
            return render_area(grid, crs, transform, shape, source, cache)
        except TileError:
            return None

    return imagery
