"""Cell rendering from cached web-mercator tiles: pixels land where they belong (checked against
the position-encoding tiles of tests/fixtures/tilegen.py), missing imagery makes a cell invalid,
and each tile is read once per batch."""

from __future__ import annotations

import io
import math
from collections import Counter
from pathlib import Path

import mercantile
import numpy as np
import pytest
from PIL import Image
from pyproj import Transformer
from rasterio.enums import Resampling

from soundmap.errors import TileError
from soundmap.geo.bbox import BBox
from soundmap.geo.grid import Grid, make_grid
from soundmap.geo.tileplan import tiles_for_grid
from soundmap.tiles.cache import TileCache
from soundmap.tiles.render import CellImage, render_cell, render_cells
from soundmap.tiles.sources import TileSource
from tests.fixtures.tilegen import tile_id, tile_png

HALF_WORLD = 20037508.342789244


def xyz_source(family: str = "sentinel", max_zoom: int = 14, kind: str = "xyz") -> TileSource:
    url = "http://127.0.0.1:9/{quadkey}.png" if kind == "quadkey" else "http://127.0.0.1:9/{z}/{x}/{y}.png"
    return TileSource(name=f"test-{kind}", kind=kind, url=url, min_zoom=0, max_zoom=max_zoom,
                      tile_size=256, family=family)


class CountingCache:
    """The real TileCache, counting reads per tile (to prove one decode per tile per batch)."""

    def __init__(self, cache: TileCache) -> None:
        self.cache, self.reads = cache, Counter()

    def get(self, source_key: str, z: int, x: int, y: int) -> bytes | None:
        self.reads[(z, x, y)] += 1
        return self.cache.get(source_key, z, x, y)


def fill_cache(tmp_path: Path, grid: Grid, source: TileSource, skip: set = frozenset()) -> tuple[TileCache, int, set]:
    cache = TileCache(tmp_path / "tiles.sqlite")
    z, tiles = tiles_for_grid(grid, source)
    for x, y in tiles:
        if (x, y) not in skip:
            cache.put(source.cache_key, z, x, y, tile_png(z, x, y))
    return cache, z, tiles


def all_cells(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    rr, cc = np.meshgrid(np.arange(grid.rows), np.arange(grid.cols), indexing="ij")
    return rr.ravel(), cc.ravel()


def check_placement(grid: Grid, row: int, col: int, pixels: np.ndarray, z: int) -> int:
    """Compare a lattice of cell pixels with the encoded tile pixel their centre maps to.

    Returns how many samples were checked (points within 0.2 px of a source pixel edge are
    skipped: GDAL's approximate transformer may land on either side there).
    """
    size = grid.tile_px
    minx, _, _, maxy = grid.cell_bounds(row, col)
    res = grid.footprint / size
    idx = np.linspace(0, size - 1, 17).round().astype(int)
    ii, jj = np.meshgrid(idx, idx, indexing="ij")
    x = minx + (jj.ravel() + 0.5) * res
    y = maxy - (ii.ravel() + 0.5) * res
    lon, lat = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True).transform(x, y)
    checked = 0
    world_px = 256 * 2 ** z
    for k in range(lon.size):
        mx, my = mercantile.xy(lon[k], lat[k])
        gx = (mx + HALF_WORLD) / (2 * HALF_WORLD) * world_px     # global pixel coordinates at zoom z
        gy = (HALF_WORLD - my) / (2 * HALF_WORLD) * world_px
        if min(gx % 1, 1 - gx % 1, gy % 1, 1 - gy % 1) < 0.2:
            continue
        tx, ty = int(gx // 256), int(gy // 256)
        expected = (int(gx) % 256, int(gy) % 256, tile_id(z, tx, ty))
        got = tuple(int(v) for v in pixels[ii.ravel()[k], jj.ravel()[k]])
        assert got == expected, f"cell ({row},{col}) pixel {ii.ravel()[k], jj.ravel()[k]}: {got} != {expected}"
        checked += 1
    return checked


@pytest.mark.parametrize(("bbox", "family", "zoom", "expected_z"), [
    (BBox(10.0, -0.02, 10.05, 0.02), "sentinel", 1, 14),        # equator
    (BBox(10.0, 59.98, 10.06, 60.02), "sentinel", 1, 13),       # 60°N: tiles are half as wide on the ground
    (BBox(10.0, 59.9, 10.2, 60.1), "sentinel", 5, 11),          # coarser zoom for a zoom-5 cell
    (BBox(10.0, -0.001, 10.003, 0.001), "bing", 1, 18),         # 300-px cells from 256-px tiles
])
def test_cells_land_where_their_ground_is(tmp_path: Path, bbox: BBox, family: str, zoom: int, expected_z: int) -> None:
    grid = make_grid(bbox, family, zoom)
    source = xyz_source(family, max_zoom=19)
    cache, z, _ = fill_cache(tmp_path, grid, source)
    assert z == expected_z
    rows, cols = all_cells(grid)
    images, valid = render_cells(grid, rows, cols, source, cache, resampling=Resampling.nearest)
    assert images.shape == (rows.size, grid.tile_px, grid.tile_px, 3) and images.dtype == np.uint8
    assert valid.all(), "the planned tiles must be enough to render every cell"
    checked = 0
    for k in range(rows.size):
        checked += check_placement(grid, int(rows[k]), int(cols[k]), images[k], z)
    assert checked >= 0.25 * rows.size * 17 * 17   # ~36 % expected: 0.6² of samples clear of pixel edges


def test_cell_astride_the_antimeridian_is_stitched_from_both_ends_of_the_world(tmp_path: Path) -> None:
    grid = make_grid(BBox(179.96, 0.0, 179.9999, 0.02), "sentinel", 1)
    source = xyz_source()
    cache, z, tiles = fill_cache(tmp_path, grid, source)
    xs = {x for x, _ in tiles}
    assert 0 in xs and (1 << z) - 1 in xs, "the east cell must reach past 180°"
    rows, cols = all_cells(grid)
    images, valid = render_cells(grid, rows, cols, source, cache, resampling=Resampling.nearest)
    assert valid.all()
    for k in range(rows.size):
        assert check_placement(grid, int(rows[k]), int(cols[k]), images[k], z) > 50


def test_default_cubic_rendering_is_valid_and_close_to_nearest(tmp_path: Path) -> None:
    grid = make_grid(BBox(10.0, 59.98, 10.06, 60.02), "sentinel", 1)
    source = xyz_source()
    cache, _, _ = fill_cache(tmp_path, grid, source)
    rows, cols = all_cells(grid)
    cubic, valid = render_cells(grid, rows, cols, source, cache)
    nearest, _ = render_cells(grid, rows, cols, source, cache, resampling=Resampling.nearest)
    assert valid.all()
    # the tile id (blue) is constant inside a tile: the two resamplings agree on most pixels
    assert np.mean(cubic[..., 2] == nearest[..., 2]) > 0.95


def test_each_tile_is_read_once_per_batch(tmp_path: Path) -> None:
    grid = make_grid(BBox(13.30, 52.45, 13.42, 52.52), "sentinel", 1, stride=1280.0)   # overlapping cells
    source = xyz_source()
    real, _, _ = fill_cache(tmp_path, grid, source)
    counting = CountingCache(real)
    rows, cols = all_cells(grid)
    _, valid = render_cells(grid, rows, cols, source, counting, resampling=Resampling.nearest)
    assert valid.all()
    assert max(counting.reads.values()) == 1


def test_tiny_decode_budget_still_renders_the_same(tmp_path: Path) -> None:
    grid = make_grid(BBox(13.30, 52.45, 13.42, 52.52), "sentinel", 1)
    source = xyz_source()
    cache, _, _ = fill_cache(tmp_path, grid, source)
    rows, cols = all_cells(grid)
    a, va = render_cells(grid, rows, cols, source, cache, resampling=Resampling.nearest)
    b, vb = render_cells(grid, rows, cols, source, cache, resampling=Resampling.nearest, max_decoded_mb=0.1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(va, vb)


def test_missing_tile_makes_exactly_the_cells_that_touch_it_invalid(tmp_path: Path) -> None:
    grid = make_grid(BBox(13.30, 52.45, 13.42, 52.52), "sentinel", 1)
    source = xyz_source()
    z, tiles = tiles_for_grid(grid, source)
    missing = sorted(tiles)[len(tiles) // 2]
    cache, _, _ = fill_cache(tmp_path, grid, source, skip={missing})
    rows, cols = all_cells(grid)
    images, valid = render_cells(grid, rows, cols, source, cache, resampling=Resampling.nearest)
    touching = np.array([missing in tiles_for_grid(grid, source, [r], [c])[1] for r, c in zip(rows, cols)])
    assert touching.any() and not touching.all()
    np.testing.assert_array_equal(valid, ~touching)
    assert not images[~valid].any(), "invalid cells are zeros, never garbage"
    r, c = int(rows[touching][0]), int(cols[touching][0])
    with pytest.raises(TileError, match="cache"):
        render_cell(grid, r, c, source, cache)


def test_empty_cache_gives_no_valid_cells(tmp_path: Path) -> None:
    grid = make_grid(BBox(10.0, -0.02, 10.05, 0.02), "sentinel", 3)
    _, valid = render_cells(grid, *all_cells(grid), xyz_source(), TileCache(tmp_path / "empty.sqlite"))
    assert not valid.any()


def test_transparent_tile_makes_touching_cells_invalid(tmp_path: Path) -> None:
    grid = make_grid(BBox(10.0, -0.02, 10.05, 0.02), "sentinel", 1)
    source = xyz_source()
    cache, z, tiles = fill_cache(tmp_path, grid, source)
    hole = sorted(tiles)[0]
    buf = io.BytesIO()
    Image.new("RGBA", (256, 256), (10, 20, 30, 0)).save(buf, format="PNG")
    cache.put(source.cache_key, z, hole[0], hole[1], buf.getvalue())
    rows, cols = all_cells(grid)
    _, valid = render_cells(grid, rows, cols, source, cache)
    touching = np.array([hole in tiles_for_grid(grid, source, [r], [c])[1] for r, c in zip(rows, cols)])
    np.testing.assert_array_equal(valid, ~touching)


def test_quadkey_source_renders_like_xyz(tmp_path: Path) -> None:
    grid = make_grid(BBox(10.0, -0.001, 10.003, 0.001), "bing", 1)
    xyz, qk = xyz_source("bing", 19), xyz_source("bing", 19, kind="quadkey")
    cache, z, tiles = fill_cache(tmp_path, grid, xyz)
    for x, y in tiles:
        cache.put(qk.cache_key, z, x, y, tile_png(z, x, y))
    rows, cols = all_cells(grid)
    a, va = render_cells(grid, rows, cols, xyz, cache, resampling=Resampling.nearest)
    b, vb = render_cells(grid, rows, cols, qk, cache, resampling=Resampling.nearest)
    assert va.all() and vb.all()
    np.testing.assert_array_equal(a, b)


def test_render_cell_returns_pixels_with_their_georeference(tmp_path: Path) -> None:
    grid = make_grid(BBox(10.0, 59.98, 10.06, 60.02), "sentinel", 1)
    source = xyz_source()
    cache, z, _ = fill_cache(tmp_path, grid, source)
    image = render_cell(grid, 1, 1, source, cache, resampling=Resampling.nearest)
    assert isinstance(image, CellImage)
    assert image.pixels.shape == (256, 256, 3) and image.crs == grid.crs
    assert image.bounds == pytest.approx(grid.cell_bounds(1, 1))
    assert image.transform.a == pytest.approx(grid.footprint / 256)
    assert math.isclose(image.transform.c, grid.cell_bounds(1, 1)[0])
    assert check_placement(grid, 1, 1, image.pixels, z) > 50
