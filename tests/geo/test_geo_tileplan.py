"""The tile plan: the right web-mercator zoom for each PSM zoom and latitude (numbers worked out by
hand from 156543.03392·cos φ / 2^z), and exactly the tiles the cells' footprints overlap."""

from __future__ import annotations

import math

import mercantile
import numpy as np
import pytest
import shapely

from soundmap.geo.bbox import BBox
from soundmap.geo.grid import make_grid
from tests.fixtures.footprints import footprint_lonlat
from soundmap.geo.tileplan import (choose_zoom, ground_resolution, lonlat_to_tile_fraction,
                                   planning_latitude, tiles_for_grid, web_mercator_zoom)

SENTINEL = (0, 14, 256)     # (min_zoom, max_zoom, tile_size) like s2cloudless
BING = (1, 19, 256)
EQUATOR = BBox(10.0, -0.05, 10.1, 0.05)
NORTH_60 = BBox(10.0, 60.0, 10.2, 60.1)


def test_ground_resolution_matches_hand_values() -> None:
    # 156543.03392 / 2^14 = 9.5546285 m at the equator; × cos 60° = 4.7773 m; 512-px tiles halve it
    assert ground_resolution(14, 0.0) == pytest.approx(9.5546285, rel=1e-7)
    assert ground_resolution(14, 60.0) == pytest.approx(4.7773142, rel=1e-7)
    assert ground_resolution(14, 0.0, tile_size=512) == pytest.approx(4.7773142, rel=1e-7)
    assert ground_resolution(0, 0.0) == pytest.approx(156543.03392)


@pytest.mark.parametrize(("target", "lat", "expected"), [
    (10.0, 0.0, 14),     # sentinel zoom 1: z14 = 9.55 m ≤ 10; z13 = 19.1 m is too coarse
    (30.0, 0.0, 13),     # sentinel zoom 3: z13 = 19.1 m; z12 = 38.2 m > 30 × 1.15
    (50.0, 0.0, 12),     # sentinel zoom 5: z12 = 38.2 m; z11 = 76.4 m is too coarse
    (10.0, 60.0, 13),    # 60°N: z13 = 9.55·… = 9.55 m on the ground (cos 60 = 0.5)
    (50.0, 60.0, 11),    # 60°N zoom 5: z11 = 38.2 m
    (0.6, 0.0, 18),      # bing zoom 1: z18 = 0.597 m
    (3.0, 0.0, 16),      # bing zoom 5: z16 = 2.39 m; z15 = 4.78 m is too coarse
    (3.0, 45.0, 15),     # 45°N: z15 = 4.78·0.7071 = 3.38 m ≤ 3 × 1.15 = 3.45
])
def test_choose_zoom_picks_the_coarsest_zoom_at_least_as_fine_as_the_cell(target: float, lat: float, expected: int) -> None:
    assert choose_zoom(target, lat, 0, 22) == expected


def test_choose_zoom_is_clamped_to_the_source() -> None:
    assert choose_zoom(10.0, 0.0, 0, 13) == 13
    assert choose_zoom(5000.0, 0.0, 8, 14) == 8


@pytest.mark.parametrize(("bbox", "family", "zoom", "source", "expected"), [
    (EQUATOR, "sentinel", 1, SENTINEL, 14),
    (EQUATOR, "sentinel", 3, SENTINEL, 13),
    (EQUATOR, "sentinel", 5, SENTINEL, 12),
    (NORTH_60, "sentinel", 1, SENTINEL, 13),
    (NORTH_60, "sentinel", 5, SENTINEL, 11),
    (EQUATOR, "bing", 1, BING, 18),
    (NORTH_60, "bing", 1, BING, 17),      # 0.6 m cell at 60°N: z17 = 1.194·0.5 = 0.597 m
    (EQUATOR, "googleEarth", 1, BING, 19),  # 0.2 m wants z20 (0.149 m), clamped to the source's 19
])
def test_web_mercator_zoom_of_a_grid(bbox: BBox, family: str, zoom: int, source: tuple, expected: int) -> None:
    assert web_mercator_zoom(source, make_grid(bbox, family, zoom)) == expected


def test_planning_latitude_is_the_one_nearest_the_equator() -> None:
    grid = make_grid(BBox(10.0, 59.0, 10.5, 61.0), "sentinel", 5)
    assert 58.8 < planning_latitude(grid) <= 59.0
    assert planning_latitude(make_grid(EQUATOR, "sentinel", 1)) == 0.0
    assert 58.8 < planning_latitude(make_grid(BBox(10.0, -61.0, 10.5, -59.0), "sentinel", 5)) <= 59.0


def test_lonlat_to_tile_fraction_agrees_with_mercantile() -> None:
    lon = np.array([-122.4194, 13.4050, 151.2093, 0.0])
    lat = np.array([37.7749, 52.5200, -33.8688, 0.0])
    tx, ty = lonlat_to_tile_fraction(lon, lat, 14)
    for i in range(lon.size):
        tile = mercantile.tile(lon[i], lat[i], 14)
        assert (math.floor(tx[i]), math.floor(ty[i])) == (tile.x, tile.y)
    assert (tx[3], ty[3]) == (8192.0, 8192.0)


def brute_force_tiles(grid, z: int) -> set[tuple[int, int]]:
    """Every tile whose interior a densified footprint polygon overlaps, via mercantile."""
    tiles: set[tuple[int, int]] = set()
    for r in range(grid.rows):
        for c in range(grid.cols):
            lon, lat = footprint_lonlat(grid, r, c, 40)
            merc = [mercantile.xy(a, b) for a, b in zip(lon, lat)]
            footprint = shapely.Polygon(merc)
            for tile in mercantile.tiles(min(lon), min(lat), max(lon), max(lat), zooms=z):
                b = mercantile.xy_bounds(tile)
                box = shapely.box(b.left, b.bottom, b.right, b.top)
                if footprint.intersection(box).area > 1e-6 * box.area:
                    tiles.add((tile.x, tile.y))
    return tiles


@pytest.mark.parametrize(("bbox", "family", "zoom", "source"), [
    (BBox(13.30, 52.45, 13.42, 52.52), "sentinel", 1, SENTINEL),
    (BBox(13.30, 52.45, 13.42, 52.52), "sentinel", 5, SENTINEL),
    (BBox(10.00, 60.00, 10.10, 60.05), "sentinel", 3, SENTINEL),
    (BBox(-73.99, 40.75, -73.98, 40.758), "bing", 3, BING),
])
def test_tiles_for_grid_is_exactly_the_tiles_the_footprints_touch(bbox: BBox, family: str, zoom: int, source: tuple) -> None:
    grid = make_grid(bbox, family, zoom)
    z, tiles = tiles_for_grid(grid, source)
    assert z == web_mercator_zoom(source, grid)
    expected = brute_force_tiles(grid, z)
    assert tiles == expected
    # and no cell can be rendered from fewer: the bounding rectangle would hold more tiles
    xs = [x for x, _ in tiles]
    ys = [y for _, y in tiles]
    assert len(tiles) <= (max(xs) - min(xs) + 1) * (max(ys) - min(ys) + 1)


def test_rotated_footprints_skip_corner_tiles_of_their_bounding_box() -> None:
    """Far from the LAEA centre meridian cells are rotated in web mercator; their bounding boxes
    hold tiles the footprint misses, which must not be fetched."""
    grid = make_grid(BBox(-125.0, 24.0, -66.0, 50.0), "sentinel", 1)
    rows, cols = np.array([0]), np.array([0])
    z, tiles = tiles_for_grid(grid, SENTINEL, rows, cols)
    from soundmap.geo.tileplan import cell_tile_outlines, tile_ranges
    tx, ty = cell_tile_outlines(grid, rows, cols, z)
    x_lo, x_hi, y_lo, y_hi = tile_ranges(tx, ty)
    in_box = (x_hi[0] - x_lo[0] + 1) * (y_hi[0] - y_lo[0] + 1)
    assert len(tiles) < in_box


def test_zoom_5_plan_does_not_download_native_resolution_tiles() -> None:
    bbox = BBox(13.30, 52.45, 13.60, 52.60)
    fine_z, fine = tiles_for_grid(make_grid(bbox, "sentinel", 1), SENTINEL)
    coarse_grid = make_grid(bbox, "sentinel", 5)
    coarse_z, coarse = tiles_for_grid(coarse_grid, SENTINEL)
    # 52.45°N: zoom 1 (10 m) needs z14 (z13 = 11.65 m > 10 × 1.15); zoom 5 (50 m) takes z11 (46.6 m)
    assert (fine_z, coarse_z) == (14, 11)
    # z11 has 1/64 the tiles of z14 per area: the zoom-5 plan is a small fraction of the zoom-1 one
    assert len(coarse) * 20 < len(fine)
    # downloaded pixels stay within a small factor of the pixels the zoom-5 cells keep
    kept = coarse_grid.rows * coarse_grid.cols * coarse_grid.tile_px ** 2
    assert len(coarse) * 256 ** 2 < 4 * kept


def test_streamed_plan_equals_the_set_and_honours_an_aoi_mask() -> None:
    from soundmap.geo.tileplan import iter_grid_tiles
    grid = make_grid(BBox(13.30, 52.45, 13.42, 52.52), "sentinel", 1)
    z, tiles = tiles_for_grid(grid, SENTINEL)
    streamed = set()
    for zz, chunk in iter_grid_tiles(grid, SENTINEL, cells_per_chunk=7):
        assert zz == z and chunk.shape[1] == 2
        streamed.update(map(tuple, chunk.tolist()))
    assert streamed == tiles
    mask = np.zeros(grid.shape, dtype=bool)
    mask[0, 0] = True
    assert tiles_for_grid(grid, SENTINEL, mask=mask) == tiles_for_grid(grid, SENTINEL, [0], [0])
    assert len(tiles_for_grid(grid, SENTINEL, mask=mask)[1]) < len(tiles)
