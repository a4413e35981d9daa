"""Geometry of a soundscape map: bboxes and AOIs, the grid of cells, and the tile plan.

No torch here (architecture rule): this package is pure geometry on numpy, pyproj and shapely.
"""

from __future__ import annotations

from .bbox import BBox, parse_bbox
from .grid import Grid, aoi_mask, make_grid, read_aoi, subgrid, window_for_bbox
from .tileplan import tiles_for_grid, web_mercator_zoom

__all__ = ["BBox", "Grid", "aoi_mask", "make_grid", "parse_bbox", "read_aoi", "subgrid", "tiles_for_grid",
           "web_mercator_zoom", "window_for_bbox"]
