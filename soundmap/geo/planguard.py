"""Cheap guards run before a region is planned: refuse a plan from counts, not after gigabytes.

Listing the tiles of a grid (:func:`soundmap.geo.tileplan.tiles_for_grid`) costs time and memory in
proportion to its cells and tiles: the contiguous USA at zoom 1 took over a minute and more than a
gigabyte only to be refused for lack of ``--yes``, and ``--stride 1`` on a small bbox multiplied the
cells by millions. Here everything is decided from arithmetic on the grid's shape (its rows, cols,
stride and footprint) and the web-mercator zoom the source will be read at, so a refusal comes in
well under a second whatever the region.

Budgets are settings (environment variables), so tests and big machines can move them:
``SOUNDMAP_MAX_CELLS`` (cells of one grid, default 20 million: the per-cell state, masks and tile
lists of planning and embedding cost some tens of bytes each, so this keeps planning within a
couple of gigabytes).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from .grid import Grid

MAX_CELLS_ENV = "SOUNDMAP_MAX_CELLS"
DEFAULT_MAX_CELLS = 20_000_000


def max_cells() -> int:
    """The cell budget of one grid (``$SOUNDMAP_MAX_CELLS``, else :data:`DEFAULT_MAX_CELLS`)."""
    value = os.environ.get(MAX_CELLS_ENV, "")
    return int(value) if value.strip().isdigit() else DEFAULT_MAX_CELLS


@dataclass(frozen=True)
class PlanEstimate:
    """What a plan will hold, from its shape alone."""

    cells: int
    tiles: int   #: approximate web-mercator tiles (0 for a local raster)


def estimate_tiles(grid: Grid, source: Any) -> int:
    """Approximate number of web-mercator tiles the cells of ``grid`` touch: the smaller of "the
    whole extent in tiles" and "each cell's own tiles" (cells spaced wider than they are large
    leave gaps), at the grid's centre latitude. Seconds-cheap: no per-cell work."""
    if source is None or not getattr(source, "is_remote", True):
        return 0
    from .grid import to_lonlat_transformer
    from .tileplan import ground_resolution, web_mercator_zoom

    z = web_mercator_zoom(source, grid)
    minx, miny, maxx, maxy = grid.bounds
    _, lat = to_lonlat_transformer(grid.crs).transform((minx + maxx) / 2, (miny + maxy) / 2)
    tile_m = float(ground_resolution(z, float(lat), int(source.tile_size))) * int(source.tile_size)
    width, height = grid.cols * grid.stride + grid.footprint, grid.rows * grid.stride + grid.footprint
    whole = (math.ceil(width / tile_m) + 1) * (math.ceil(height / tile_m) + 1)
    per_cell = grid.rows * grid.cols * (math.ceil(grid.footprint / tile_m) + 1) ** 2
    return int(min(whole, per_cell, 4 ** z))


def check_plan(grids: Iterable[Grid], source: Any, *, yes: bool) -> PlanEstimate:
    """The estimate of the plan of ``grids``; a one-line InputError, before anything per cell is
    allocated, when a grid is over the cell budget, naming the stride when that is the cause,
    unless ``yes`` (the user confirmed it)."""
    cells = tiles = 0
    budget = max_cells()
    for grid in grids:
        n = grid.rows * grid.cols
        if n > budget and not yes:
            raise InputError(_over_budget(grid, n, budget))
        cells += n
        tiles += estimate_tiles(grid, source)
    return PlanEstimate(cells=cells, tiles=tiles)


def _over_budget(grid: Grid, n: int, budget: int) -> str:
    cause = ""
    if grid.stride < grid.footprint:
        factor = (grid.footprint / grid.stride) ** 2
        cause = (f"--stride {grid.stride:g} m under the {grid.footprint:g} m footprint multiplies the cells by "
                 f"{factor:,.0f}; ")
    return (f"zoom {grid.zoom}: {grid.rows}×{grid.cols} = {n:,} cells is over the planning budget of {budget:,} "
            f"({cause}use a larger --stride, a smaller bbox or a coarser --zoom, set ${MAX_CELLS_ENV}, or pass --yes)")
