"""Block renderer: many cells at once from cached web-mercator tiles, warped with torch.

The per-cell renderer (:mod:`soundmap.tiles.render`) warps every cell with GDAL: ~35–42 ms of CPU
per cell, 78 % of it the warp. Here a whole set of cells (a store block, or a render group of it)
is rendered in one pass, on the model's device:

1. every tile the cells need (plus a margin, as the GDAL path reads) is decoded **once** and
   mosaicked (cells far apart are split into separate mosaics, so memory stays bounded);
2. the mosaic goes to the device as premultiplied RGB + alpha and is prefiltered by one
   antialiased bicubic resize (``F.interpolate(..., antialias=True)``, the same antialiasing the
   eval transform's 256→224 resize uses) down to about the cells' ground resolution — this is
   what GDAL's cubic does implicitly when downsampling, by stretching its kernel;
3. sampling positions are computed with pyproj on a coarse lattice of each cell (17 × 17 points;
   the grid-CRS → web-mercator map is smooth over a cell, so bilinear interpolation of the
   lattice is exact to far below a pixel) and every cell is sampled in **one** bicubic
   ``grid_sample`` call;
4. dividing by the sampled alpha undoes the premultiplication, so pixels next to a missing margin
   tile are not darkened (GDAL weights its kernel by the source alpha the same way).

A cell is valid only when every tile under its footprint is present and decodable (the GDAL
path's rule) and its sampled alpha is positive everywhere; invalid cells stay all zeros — nodata
is never filled. Mosaics astride the antimeridian are unwrapped (tile x taken modulo 2^z).
``kind: file`` sources keep the GDAL path (:func:`soundmap.tiles.render.render_cells`): their
rasters come in any CRS with overviews, and the per-cell window read dominates there anyway.

torch is imported inside the functions: ``soundmap tiles`` commands import this package without it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from ..geo.grid import Grid
from ..geo.tileplan import cell_tile_outlines, ground_resolution, tile_ranges, touched_tiles, web_mercator_zoom
from .render import WEB_MERCATOR_HALF_WORLD_M, TileGetter, _as_indices, read_cached_tile, render_cells

LATTICE = 16
"""Lattice intervals per cell side at which sampling positions are projected exactly (pyproj)."""

MAX_MOSAIC_PX = 48 * 2**20
"""Largest mosaic (source pixels) rendered in one piece; more distant cells go to another piece."""

BLOCK_MARGIN_CELL_PX = 6
"""Cell pixels of imagery read beyond a footprint: more than the GDAL path's 3, so that the
prefilter's edge effects (≤ 2 prefiltered px from the mosaic border) never reach a sample."""

MIN_ALPHA = 0.5 / 255.0
"""Sampled alpha below which a pixel counts as uncovered (GDAL's uint8 alpha rounds to 0 there)."""


class _TileLRU:
    """Decoded tiles (x unwrapped → taken modulo 2^z), each decoded once while it fits the cap."""

    def __init__(self, cache: TileGetter, source_key: str, z: int, tile_size: int, max_bytes: int) -> None:
        self.cache, self.source_key, self.z, self.tile_size, self.max_bytes = cache, source_key, z, tile_size, max_bytes
        self.tiles: OrderedDict[tuple[int, int], np.ndarray | None] = OrderedDict()
        self.nbytes = 0
        self.decodes = 0

    def get(self, x: int, y: int) -> np.ndarray | None:
        n = 1 << self.z
        key = (x % n, y)
        if key in self.tiles:
            self.tiles.move_to_end(key)
            return self.tiles[key]
        tile = None
        if 0 <= y < n:
            tile = read_cached_tile(self.cache, self.source_key, (self.z, key[0], y), self.tile_size, add_alpha=False)
            self.decodes += 1
        self.tiles[key] = tile
        self.nbytes += tile.nbytes if tile is not None else 0
        while self.nbytes > self.max_bytes and len(self.tiles) > 1:
            _, old = self.tiles.popitem(last=False)
            self.nbytes -= old.nbytes if old is not None else 0
        return tile


def _unwrap_x(x_lo: np.ndarray, x_hi: np.ndarray, n: int) -> np.ndarray:
    """Per-cell shift (multiples of 2^z tiles) putting every cell's tile range next to the first
    cell's, so cells on both sides of the antimeridian share one contiguous mosaic."""
    centre = (x_lo + x_hi) / 2.0
    return np.round((centre[0] - centre) / n).astype(np.int64) * n


def prefiltered_tile_px(z: int, tile_size: int, resolution_m: float, lat: np.ndarray) -> np.ndarray:
    """Per cell, the side m in px a tile is prefiltered to: the cell's resolution at its latitude
    (web-mercator metres per pixel grow as 1/cos φ), rounded to a whole number of px per tile.

    Whole px per tile keeps the prefiltered pixel lattice aligned to the tile grid whatever the
    mosaic's extent, so a cell renders the same in any group (resume, cluster, benchmark).
    """
    src_px = 2.0 * WEB_MERCATOR_HALF_WORLD_M / ((1 << z) * tile_size)
    ratio = resolution_m / np.cos(np.radians(np.asarray(lat, dtype=np.float64))) / src_px
    return np.where(ratio > 1.0, np.maximum(1, np.round(tile_size / np.maximum(ratio, 1.0))), tile_size).astype(np.int64)


def _mosaic(tiles: _TileLRU, x0: int, x1: int, y0: int, y1: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(H × W × 3 uint8 RGB, H × W alpha or None when every pixel is opaque) of the mosaic of
    tiles x0..x1 × y0..y1; alpha is 0 where a tile is absent. RGB and alpha are kept apart so that
    opaque tiles are copied whole rows at a time and no alpha band is built for them."""
    size = tiles.tile_size
    rgb = np.zeros(((y1 - y0 + 1) * size, (x1 - x0 + 1) * size, 3), dtype=np.uint8)
    alpha: np.ndarray | None = None
    for y in range(y0, y1 + 1):
        for x in range(x0, x1 + 1):
            tile = tiles.get(x, y)
            rows, cols = slice((y - y0) * size, (y - y0 + 1) * size), slice((x - x0) * size, (x - x0 + 1) * size)
            opaque = tile is not None and tile.shape[2] == 3
            if alpha is None and not opaque:
                alpha = np.full(rgb.shape[:2], 255, dtype=np.uint8)
            if tile is None:
                alpha[rows, cols] = 0
                continue
            rgb[rows, cols] = tile[..., :3]
            if alpha is not None:
                alpha[rows, cols] = 255 if opaque else tile[..., 3]
    return rgb, alpha


def sampling_lattice(grid: Grid, r: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Web-mercator (x, y) of each cell's pixel-centre lattice: two N × (L+1) × (L+1) arrays.

    Lattice point (i, j) sits at pixel-centre coordinates (0.5 + j·(H−1)/L, 0.5 + i·(H−1)/L), so
    an ``align_corners=True`` bilinear resize of the lattice to H × H lands on every pixel centre.
    """
    from ..geo.grid import to_lonlat_transformer

    size = grid.tile_px
    res = grid.resolution_m
    minx, _, _, maxy = grid.cells_bounds(r, c)
    t = 0.5 + np.arange(LATTICE + 1) * (size - 1) / LATTICE
    x = minx[:, None, None] + res * t[None, None, :]
    y = maxy[:, None, None] - res * t[None, :, None]
    x, y = np.broadcast_arrays(x, y)
    lon, lat = to_lonlat_transformer(grid.crs).transform(x.ravel(), y.ravel())
    lon = np.asarray(lon, dtype=np.float64).reshape(x.shape)
    lat = np.clip(np.asarray(lat, dtype=np.float64).reshape(x.shape), -89.9, 89.9)
    clon, _ = grid.centers_lonlat(r, c)
    lon = clon[:, None, None] + (lon - clon[:, None, None] + 180.0) % 360.0 - 180.0  # continuous per cell
    mx = np.radians(lon) * 6378137.0
    my = np.arcsinh(np.tan(np.radians(lat))) * 6378137.0
    return mx, my


BAND_ROWS, BAND_COLS = 2, 32
"""Cells share a mosaic by fixed bands of the grid (2 rows × 32 columns: one 64-cell render group
of a 32-cell store chunk). The mosaic's extent comes from the whole band, never from which cells
of it a call renders: the sampling positions (float32) depend on the extent, so a cell renders
bit-identically in any call — resumed runs, cluster blocks and one machine agree exactly."""


def _ranges(grid: Grid, z: int, tile_size: int, r: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, ...]:
    """Tile ranges (x unwrapped next to the first cell's) of cells' footprints plus the margin."""
    tx, ty = cell_tile_outlines(grid, r, c, z)
    _, lat = grid.centers_lonlat(r, c)
    margin = BLOCK_MARGIN_CELL_PX * grid.resolution_m / (tile_size * ground_resolution(z, lat, tile_size))
    x_lo, x_hi, y_lo, y_hi = tile_ranges(tx, ty, margin)
    shift = _unwrap_x(x_lo, x_hi, 1 << z)
    return x_lo + shift, x_hi + shift, y_lo, y_hi


def _band_mosaics(grid: Grid, z: int, tile_size: int, key: np.ndarray, r: np.ndarray,
                  c: np.ndarray) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
    """(mosaic tile ranges, which of the cells (r, c) it renders) for cells of one band and one
    prefilter size; the extent covers every band cell of that size (halved by columns while it
    exceeds :data:`MAX_MOSAIC_PX`), whatever subset is asked for."""
    row0, col0 = int(key[0]) * BAND_ROWS, int(key[1]) * BAND_COLS
    band_r, band_c = (a.ravel() for a in np.mgrid[row0:min(row0 + BAND_ROWS, grid.rows),
                                                    col0:min(col0 + BAND_COLS, grid.cols)])
    same = prefiltered_tile_px(z, tile_size, grid.resolution_m, grid.centers_lonlat(band_r, band_c)[1]) == key[2]
    band_r, band_c = band_r[same], band_c[same]
    x_lo, x_hi, y_lo, y_hi = _ranges(grid, z, tile_size, band_r, band_c)
    pieces: list[tuple[tuple[int, int, int, int], np.ndarray]] = []

    def split(lo: int, hi: int) -> None:  # band columns [lo, hi)
        inside = (band_c >= lo) & (band_c < hi)
        extent = (int(x_lo[inside].min()), int(x_hi[inside].max()), int(y_lo[inside].min()), int(y_hi[inside].max()))
        area = (extent[1] - extent[0] + 1) * (extent[3] - extent[2] + 1) * tile_size * tile_size
        if area > MAX_MOSAIC_PX and hi - lo > 1:
            split(lo, (lo + hi) // 2)
            split((lo + hi) // 2, hi)
            return
        part = np.flatnonzero((c >= lo) & (c < hi))
        if part.size:
            pieces.append((extent, part))

    split(int(band_c.min()), int(band_c.max()) + 1)
    return pieces


def render_cells_torch(grid: Grid, rows: Any, cols: Any, source: Any, cache: TileGetter | None, *,
                       device: Any = "cpu", max_decoded_mb: float = 512.0,
                       timings: dict[str, float] | None = None) -> tuple[Any, np.ndarray]:
    """Images of cells (rows[i], cols[i]) as a uint8 N × H × W × 3 tensor **on ``device``**, and the
    valid mask (N,) bool (numpy). Same contract as :func:`~soundmap.tiles.render.render_cells`.

    ``timings`` (benchmarks): ``kernel_cpu_s`` is increased by the process CPU time spent in the
    warp kernels (prefilter, lattice resize, ``grid_sample``, un-premultiply) — the part that runs on
    the accelerator when ``device`` is one; the rest of the call is host work."""
    import torch

    device = torch.device(device)
    r, c = _as_indices(rows, cols)
    if source.kind not in ("xyz", "quadkey"):
        pixels, valid = render_cells(grid, r, c, source, cache)
        return torch.from_numpy(pixels).to(device), valid
    if r.size and (r.min() < 0 or c.min() < 0 or r.max() >= grid.rows or c.max() >= grid.cols):
        raise IndexError(f"cell indices outside the {grid.rows}×{grid.cols} grid")
    if cache is None:
        raise ValueError("a tile cache is needed to render xyz/quadkey sources")
    size = grid.tile_px
    out = torch.zeros((r.size, size, size, 3), dtype=torch.uint8, device=device)
    valid = np.zeros(r.size, dtype=bool)
    if r.size == 0:
        return out, valid
    z = web_mercator_zoom(source, grid)
    tile_size = int(source.tile_size)
    tx, ty = cell_tile_outlines(grid, r, c, z)
    cell_idx, tile_x, tile_y = touched_tiles(tx, ty)
    tiles = _TileLRU(cache, source.cache_key, z, tile_size, int(max_decoded_mb * 2**20))
    needed_ok = np.ones(r.size, dtype=bool)
    for i, x, y in zip(cell_idx.tolist(), tile_x.tolist(), tile_y.tolist()):
        if needed_ok[i] and tiles.get(int(x), int(y)) is None:
            needed_ok[i] = False
    todo = np.flatnonzero(needed_ok)
    if todo.size == 0:
        return out, valid
    _, lat = grid.centers_lonlat(r, c)
    prefiltered = prefiltered_tile_px(z, tile_size, grid.resolution_m, lat)
    bands = np.stack([r // BAND_ROWS, c // BAND_COLS, prefiltered], axis=1)[todo]
    for key in np.unique(bands, axis=0):
        cells = todo[(bands == key).all(axis=1)]
        for ranges, part in _band_mosaics(grid, z, tile_size, key, r[cells], c[cells]):
            chosen = cells[part]
            mx, my = sampling_lattice(grid, r[chosen], c[chosen])
            images, covered = _render_piece(tiles, z, tile_size, size, int(key[2]), ranges, mx, my, device, timings)
            index = torch.as_tensor(chosen[covered], device=device)
            out[index] = images[torch.as_tensor(np.flatnonzero(covered), device=device)]
            valid[chosen[covered]] = True
    return out, valid


def _render_piece(tiles: _TileLRU, z: int, tile_size: int, size: int, prefiltered: int,
                  ranges: tuple[int, int, int, int], mx: np.ndarray, my: np.ndarray,
                  device: Any, timings: dict[str, float] | None = None) -> tuple[Any, np.ndarray]:
    """Warp the cells of one mosaic: (uint8 n × H × W × 3 on ``device``, covered mask (n,))."""
    import time

    import torch
    import torch.nn.functional as F

    x0, x1, y0, y1 = ranges
    rgb_np, alpha_np = _mosaic(tiles, x0, x1, y0, y1)
    rgb = torch.from_numpy(rgb_np).to(device)
    kernels_started = time.process_time()
    height, width = rgb.shape[:2]
    src_px = 2.0 * WEB_MERCATOR_HALF_WORLD_M / ((1 << z) * tile_size)
    image = rgb.permute(2, 0, 1).unsqueeze(0)               # 1 × 3 × H × W, channels-last in memory
    alpha = None
    if alpha_np is not None:
        # premultiply by alpha (in uint8: exact where alpha is 255, i.e. wherever a cell is valid)
        alpha = torch.from_numpy(alpha_np).to(device)[None, None]
        image = ((image.to(torch.int32) * alpha + 127) // 255).to(torch.uint8)
    target = ((height // tile_size) * prefiltered, (width // tile_size) * prefiltered)
    if prefiltered != tile_size:
        # the antialiased bicubic resize of the eval transform (torch's uint8 fast path on CPU), to
        # ``prefiltered`` px per tile ≈ the cells' resolution: GDAL's cubic stretches its kernel
        # the same way when it downsamples
        image = F.interpolate(image, size=target, mode="bicubic", antialias=True, align_corners=False)
        if alpha is not None:
            alpha = F.interpolate(alpha, size=target, mode="bicubic", antialias=True, align_corners=False)
    ones = torch.full((1, 1, *image.shape[-2:]), 255, dtype=torch.uint8, device=device)
    premultiplied = torch.cat([image, alpha if alpha is not None else ones], dim=1).float()
    premultiplied[:, 3] /= 255.0
    del rgb, image, alpha, ones
    # sampling positions → normalised coordinates of the (prefiltered) mosaic (align_corners=False)
    left = -WEB_MERCATOR_HALF_WORLD_M + x0 * src_px * tile_size
    top = WEB_MERCATOR_HALF_WORLD_M - y0 * src_px * tile_size
    span_x, span_y = width * src_px, height * src_px
    world = 2.0 * WEB_MERCATOR_HALF_WORLD_M
    mx = mx + np.round((left + span_x / 2.0 - mx) / world) * world       # unwrap to the mosaic
    gx = (mx - left) / span_x * 2.0 - 1.0
    gy = (top - my) / span_y * 2.0 - 1.0
    host_started = time.process_time()
    lattice = torch.from_numpy(np.stack([gx, gy], axis=1)).to(device=device, dtype=torch.float32)
    host_s = time.process_time() - host_started
    grid = F.interpolate(lattice, size=(size, size), mode="bilinear", align_corners=True)   # n × 2 × H × W
    n = grid.shape[0]
    grid = grid.permute(0, 2, 3, 1).reshape(1, n * size, size, 2)
    del lattice
    sampled = F.grid_sample(premultiplied, grid, mode="bicubic", padding_mode="zeros", align_corners=False)
    sampled = sampled.reshape(4, n, size, size)
    alpha = sampled[3]
    covered = (alpha.amin(dim=(1, 2)) >= MIN_ALPHA).cpu().numpy()
    rgb = sampled[:3] / alpha.clamp_min(MIN_ALPHA)
    images = rgb.round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 3, 0).contiguous()
    if timings is not None:
        timings["kernel_cpu_s"] = timings.get("kernel_cpu_s", 0.0) + time.process_time() - kernels_started - host_s
    return images, covered
