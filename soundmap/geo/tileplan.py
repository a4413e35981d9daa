"""Which web-mercator tiles, at which zoom, the cells of a grid need.

A PSM cell at zoom ``l`` is rendered at ``l × gsd`` ground metres per pixel, so fetching the
native-resolution tiles for a zoom-5 cell would download 25× the pixels it keeps. The plan picks
the coarsest XYZ zoom whose *ground* resolution (web-mercator pixels shrink by cos(lat) on the
ground) is still about as fine as the cell's, and lists exactly the tiles the cells' footprints
overlap. Quadkey sources use the same (z, x, y); the fetcher converts them to quadkeys.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from .grid import Grid, to_lonlat_transformer

WEB_MERCATOR_M_PER_PX_Z0 = 156543.03392
"""Ground metres per pixel of a 256-px web-mercator tile at zoom 0 on the equator (2πa / 256)."""

ZOOM_SLACK = 1.15
"""A tile zoom up to 15 % coarser than the cell's resolution is accepted: the next finer zoom
would download 4× the pixels for a detail the model cannot see at 224 px."""

OUTLINE_POINTS_PER_EDGE = 2
"""Footprint outline sampling (corners + midpoints): cell edges are straight in the grid CRS and
curve by far less than a pixel in web mercator over one cell, so this is exact to < 0.1 px."""

_CELLS_PER_CHUNK = 20_000


def ground_resolution(z: int, lat: float | np.ndarray, tile_size: int = 256) -> float | np.ndarray:
    """Ground metres per pixel of web-mercator zoom ``z`` at latitude ``lat`` for ``tile_size``-px tiles."""
    return WEB_MERCATOR_M_PER_PX_Z0 * np.cos(np.radians(lat)) / 2.0 ** z * (256.0 / tile_size)


def choose_zoom(target_m_per_px: float, lat: float, min_zoom: int, max_zoom: int,
                tile_size: int = 256, slack: float = ZOOM_SLACK) -> int:
    """The coarsest zoom whose ground resolution at ``lat`` is ≤ ``slack × target``, clamped to the source's zooms."""
    coarsest_allowed = target_m_per_px * slack
    needed = WEB_MERCATOR_M_PER_PX_Z0 * math.cos(math.radians(lat)) * (256.0 / tile_size) / coarsest_allowed
    z = math.ceil(math.log2(needed) - 1e-12) if needed > 0 else min_zoom
    return int(min(max(z, min_zoom), max_zoom))


def zoom_params(source: Any) -> tuple[int, int, int]:
    """(min_zoom, max_zoom, tile_size) of a TileSource or of such a tuple."""
    if isinstance(source, tuple):
        min_zoom, max_zoom, tile_size = source
        return int(min_zoom), int(max_zoom), int(tile_size)
    return int(source.min_zoom), int(source.max_zoom), int(source.tile_size)


def planning_latitude(grid: Grid, points_per_edge: int = 65) -> float:
    """The |latitude| nearest the equator reached by the grid: where web-mercator pixels are largest
    on the ground, so the zoom chosen there is fine enough for every cell of the grid."""
    minx, miny, maxx, maxy = grid.bounds
    t = np.linspace(0.0, 1.0, points_per_edge)
    x = np.concatenate([minx + (maxx - minx) * t, np.full_like(t, maxx), minx + (maxx - minx) * t, np.full_like(t, minx)])
    y = np.concatenate([np.full_like(t, miny), miny + (maxy - miny) * t, np.full_like(t, maxy), miny + (maxy - miny) * t])
    _, lat = to_lonlat_transformer(grid.crs).transform(x, y)
    lat = np.asarray(lat)
    if lat.min() <= 0.0 <= lat.max():
        return 0.0
    return float(np.min(np.abs(lat)))


def web_mercator_zoom(source: Any, grid: Grid) -> int:
    """The XYZ zoom whose ground resolution best matches the cells' (``zoom × gsd``) at the grid's latitude."""
    min_zoom, max_zoom, tile_size = zoom_params(source)
    return choose_zoom(grid.resolution_m, planning_latitude(grid), min_zoom, max_zoom, tile_size)


def lonlat_to_tile_fraction(lon: np.ndarray, lat: np.ndarray, z: int) -> tuple[np.ndarray, np.ndarray]:
    """Fractional XYZ tile coordinates (x east, y south; tile (x, y) spans [x, x+1) × [y, y+1))."""
    n = 2.0 ** z
    tx = (np.asarray(lon, dtype=np.float64) + 180.0) / 360.0 * n
    phi = np.radians(np.asarray(lat, dtype=np.float64))
    ty = (1.0 - np.arcsinh(np.tan(phi)) / math.pi) / 2.0 * n
    return tx, ty


def footprint_outline_lonlat(grid: Grid, rows: np.ndarray, cols: np.ndarray,
                             points_per_edge: int = OUTLINE_POINTS_PER_EDGE) -> tuple[np.ndarray, np.ndarray]:
    """(lon, lat) arrays N × K of points around each cell's footprint, counter-clockwise in the CRS.

    Longitudes are unwrapped around each cell's centre so a cell astride ±180° stays contiguous.
    """
    minx, miny, maxx, maxy = grid.cells_bounds(rows, cols)
    t = np.arange(points_per_edge) / points_per_edge
    ux = np.concatenate([t, np.ones_like(t), 1.0 - t, np.zeros_like(t)])    # along bottom, right, top, left
    uy = np.concatenate([np.zeros_like(t), t, np.ones_like(t), 1.0 - t])
    x = minx[:, None] + (maxx - minx)[:, None] * ux[None, :]
    y = miny[:, None] + (maxy - miny)[:, None] * uy[None, :]
    lon, lat = to_lonlat_transformer(grid.crs).transform(x, y)
    lon, lat = np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)
    clon, _ = grid.centers_lonlat(rows, cols)
    lon = clon[:, None] + (lon - clon[:, None] + 180.0) % 360.0 - 180.0
    return lon, lat


def cell_tile_outlines(grid: Grid, rows: np.ndarray, cols: np.ndarray, z: int) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's footprint outline in fractional tile coordinates at zoom ``z`` (N × K arrays)."""
    lon, lat = footprint_outline_lonlat(grid, rows, cols)
    return lonlat_to_tile_fraction(lon, lat, z)


def tile_ranges(tx: np.ndarray, ty: np.ndarray, margin: float | np.ndarray = 0.0) -> tuple[np.ndarray, ...]:
    """Inclusive tile index ranges (x_lo, x_hi, y_lo, y_hi) of the outlines' bounds grown by ``margin`` tiles.

    A bound exactly on a tile edge does not reach into the next tile (shared edges do not count).
    """
    margin = np.asarray(margin, dtype=np.float64)
    x_lo = np.floor(tx.min(axis=1) - margin).astype(np.int64)
    x_hi = np.maximum(np.ceil(tx.max(axis=1) + margin).astype(np.int64) - 1, x_lo)
    y_lo = np.floor(ty.min(axis=1) - margin).astype(np.int64)
    y_hi = np.maximum(np.ceil(ty.max(axis=1) + margin).astype(np.int64) - 1, y_lo)
    return x_lo, x_hi, y_lo, y_hi


def touched_tiles(tx: np.ndarray, ty: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cell index, x, y) of every tile whose interior overlaps a cell's footprint outline.

    Candidates come from each outline's bounds; where a cell spans more than one tile a
    separating-axis test against the outline's edge normals drops the corner tiles a rotated
    footprint misses (exact for the convex outline; shared edges alone do not count).
    """
    n_cells = tx.shape[0]
    x_lo, x_hi, y_lo, y_hi = tile_ranges(tx, ty)
    nx = x_hi - x_lo + 1
    counts = nx * (y_hi - y_lo + 1)
    cell = np.repeat(np.arange(n_cells), counts)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    k = np.arange(cell.size) - starts
    x = x_lo[cell] + k % nx[cell]
    y = y_lo[cell] + k // nx[cell]
    multi = np.flatnonzero(counts[cell] > 1)
    if multi.size:
        keep = np.ones(cell.size, dtype=bool)
        keep[multi] = _overlaps_outline(tx, ty, cell[multi], x[multi], y[multi])
        cell, x, y = cell[keep], x[keep], y[keep]
    return cell, x, y


_SAT_EPS = 1e-7
"""Tolerance (in tiles, ~3e-5 px) below which an overlap is a shared edge, not a touch."""


def _overlaps_outline(tx: np.ndarray, ty: np.ndarray, cell: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether tile box (x, y)–(x+1, y+1) overlaps the outline of ``cell`` with positive area.

    Separating-axis theorem: the tile's own axes are already settled by the candidate ranges, so
    only the outline's edge normals can separate them.
    """
    ex = np.roll(tx, -1, axis=1) - tx
    ey = np.roll(ty, -1, axis=1) - ty
    length = np.hypot(ex, ey)
    length[length == 0] = 1.0
    nx_, ny_ = -ey / length, ex / length                                    # N × K unit normals
    proj = tx[:, None, :] * nx_[:, :, None] + ty[:, None, :] * ny_[:, :, None]   # N × axes × vertices
    poly_min, poly_max = proj.min(axis=2), proj.max(axis=2)                 # N × K
    a, b = nx_[cell], ny_[cell]                                             # P × K
    corners = [a * (x + dx)[:, None] + b * (y + dy)[:, None] for dx in (0, 1) for dy in (0, 1)]
    box_min = np.minimum.reduce(corners)
    box_max = np.maximum.reduce(corners)
    separated = (box_max <= poly_min[cell] + _SAT_EPS) | (poly_max[cell] <= box_min + _SAT_EPS)
    return ~separated.any(axis=1)


def wrap_tiles(x: np.ndarray, y: np.ndarray, z: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tile indices as a server knows them: x modulo 2^z; rows beyond the poles are dropped (no imagery).

    Returns (x, y, inside) where ``inside`` flags the entries that are real tiles.
    """
    n = 1 << z
    inside = (y >= 0) & (y < n)
    return np.mod(x, n), y, inside


def _cell_indices(grid: Grid, rows: Iterable[int] | np.ndarray | None, cols: Iterable[int] | np.ndarray | None,
                  mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Paired (rows, cols) arrays: the given ones, the True cells of ``mask``, or every cell."""
    if rows is not None or cols is not None:
        if rows is None or cols is None:
            raise ValueError("give both rows and cols (paired cell indices) or neither")
        r = np.asarray(rows, dtype=np.int64).ravel()
        c = np.asarray(cols, dtype=np.int64).ravel()
        if r.shape != c.shape:
            raise ValueError("rows and cols must have the same length")
        return r, c
    if mask is not None:
        r, c = np.nonzero(np.asarray(mask, dtype=bool))
        return r.astype(np.int64), c.astype(np.int64)
    rr, cc = np.meshgrid(np.arange(grid.rows), np.arange(grid.cols), indexing="ij")
    return rr.ravel(), cc.ravel()


def iter_grid_tiles(grid: Grid, source: Any, rows: Iterable[int] | np.ndarray | None = None,
                    cols: Iterable[int] | np.ndarray | None = None, *, mask: np.ndarray | None = None,
                    cells_per_chunk: int = _CELLS_PER_CHUNK) -> Iterator[tuple[int, np.ndarray]]:
    """Stream the plan as (z, M × 2 int64 array of unique (x, y)) per chunk of cells, row-major.

    For continental grids, where the full set of tiles would take gigabytes as Python tuples.
    A tile shared by two chunks appears in both (``TileCache.missing`` drops the second).
    Nothing is yielded for a ``kind: file`` source.
    """
    if getattr(source, "kind", "xyz") == "file":
        return
    z = web_mercator_zoom(source, grid)
    r, c = _cell_indices(grid, rows, cols, mask)
    for start in range(0, r.size, cells_per_chunk):
        tx, ty = cell_tile_outlines(grid, r[start:start + cells_per_chunk], c[start:start + cells_per_chunk], z)
        _, x, y = touched_tiles(tx, ty)
        x, y, inside = wrap_tiles(x, y, z)
        yield z, np.unique(np.stack([x[inside], y[inside]], axis=1), axis=0)


def tiles_for_grid(grid: Grid, source: Any, rows: Iterable[int] | np.ndarray | None = None,
                   cols: Iterable[int] | np.ndarray | None = None, *,
                   mask: np.ndarray | None = None) -> tuple[int | None, set[tuple[int, int]]]:
    """(z, {(x, y)}): exactly the tiles the footprints of the requested cells overlap, and only those.

    Cells are the paired ``rows``/``cols`` indices, else the True cells of ``mask`` (an AOI), else
    the whole grid. A ``kind: file`` source needs no tiles: ``(None, set())``. For continental
    grids prefer :func:`iter_grid_tiles` (bounded memory).
    """
    if getattr(source, "kind", "xyz") == "file":
        return None, set()
    z = web_mercator_zoom(source, grid)
    tiles: set[tuple[int, int]] = set()
    for _, chunk in iter_grid_tiles(grid, source, rows, cols, mask=mask):
        tiles.update(zip(chunk[:, 0].tolist(), chunk[:, 1].tolist()))
    return z, tiles
