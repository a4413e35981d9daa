"""Areas of interest: a vector file instead of a bbox, and which grid cells it covers.

The grid still covers the AOI's bbox (one rectangular raster), and the mask keeps only the cells
whose footprint intersects the geometry, so nothing outside a coastline or a city boundary is
downloaded, embedded or scored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from ..errors import InputError
from .bbox import BBox
from .grid import Grid, from_lonlat_transformer

SEGMENT_DEG = 0.05
"""Densify AOI edges to ≤ this many degrees before projecting, so long straight edges curve correctly."""

_ROWS_PER_BLOCK_CELLS = 200_000
"""Cells tested per block in :func:`aoi_mask`, to keep memory bounded on continental grids."""


def read_aoi(path: str | Path) -> tuple[BBox, BaseGeometry]:
    """Read any vector file geopandas reads; return its bbox and its union geometry in EPSG:4326.

    A file without a CRS is taken as EPSG:4326 (as GeoJSON defines). An unreadable file, or one
    with no non-empty geometry, is an :class:`InputError`.
    """
    import geopandas as gpd

    path = Path(path)
    if not path.exists():
        raise InputError(f"--aoi file {path} does not exist")
    try:
        frame = gpd.read_file(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure is the user's file
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"--aoi file {path} could not be read as vector data: {first_line}") from None
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty] if len(frame) else frame
    if len(frame) == 0:
        raise InputError(f"--aoi file {path} has no geometry; give a file with at least one polygon")
    if frame.crs is None:
        frame = frame.set_crs(4326)
    geometry = shapely.make_valid(frame.to_crs(4326).geometry.union_all())
    if geometry.is_empty:
        raise InputError(f"--aoi file {path} has only empty geometries")
    west, south, east, north = geometry.bounds
    if west == east or south == north:   # a point or an axis-aligned line: give it a tiny extent
        pad = 1e-6
        west, south, east, north = west - pad, south - pad, east + pad, north + pad
    return BBox(west, south, east, north), geometry


def geometry_in_grid_crs(grid: Grid, geometry_wgs84: BaseGeometry) -> BaseGeometry:
    """The lon/lat geometry densified and projected into the grid CRS."""
    dense = shapely.segmentize(geometry_wgs84, SEGMENT_DEG)
    transformer = from_lonlat_transformer(grid.crs)

    def project(coords: np.ndarray) -> np.ndarray:
        x, y = transformer.transform(coords[:, 0], coords[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(dense, project)


def aoi_mask(grid: Grid, geometry_wgs84: BaseGeometry) -> np.ndarray:
    """Boolean rows × cols array: True where the cell's footprint intersects the AOI geometry."""
    geometry = geometry_in_grid_crs(grid, geometry_wgs84)
    mask = np.zeros(grid.shape, dtype=bool)
    if geometry.is_empty:
        return mask
    shapely.prepare(geometry)
    gminx, gminy, gmaxx, gmaxy = geometry.bounds
    half = grid.footprint / 2.0
    # Only cells whose footprint overlaps the geometry's bounds can intersect it.
    c_lo = max(0, int(np.floor((gminx - half - grid.x0) / grid.stride - 0.5)))
    c_hi = min(grid.cols - 1, int(np.ceil((gmaxx + half - grid.x0) / grid.stride - 0.5)))
    r_lo = max(0, int(np.floor((grid.y0 - gmaxy - half) / grid.stride - 0.5)))
    r_hi = min(grid.rows - 1, int(np.ceil((grid.y0 - gminy + half) / grid.stride - 0.5)))
    if c_lo > c_hi or r_lo > r_hi:
        return mask
    cols = np.arange(c_lo, c_hi + 1)
    block = max(1, _ROWS_PER_BLOCK_CELLS // len(cols))
    for start in range(r_lo, r_hi + 1, block):
        rows = np.arange(start, min(start + block, r_hi + 1))
        rr, cc = np.meshgrid(rows, cols, indexing="ij")
        minx, miny, maxx, maxy = grid.cells_bounds(rr, cc)
        boxes = shapely.box(minx, miny, maxx, maxy)
        mask[rows[0]:rows[-1] + 1, c_lo:c_hi + 1] = shapely.intersects(boxes, geometry)
    return mask
