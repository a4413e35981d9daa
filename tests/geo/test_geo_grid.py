"""The grid: cells cover their nominal ground footprint within 5 % (measured on the ellipsoid),
the raster covers the bbox, and the georeference round-trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pyproj import Geod, Transformer

from soundmap.errors import InputError
from soundmap.families import FAMILIES
from soundmap.geo.bbox import BBox, parse_bbox
from soundmap.geo.grid import Grid, make_grid, subgrid, window_for_bbox

USA = parse_bbox("-125,24,-66,50")
GEOD = Geod(ellps="WGS84")


def sample_cells(grid: Grid, n_random: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Grid corners, edge midpoints, centre and random cells."""
    last_r, last_c = grid.rows - 1, grid.cols - 1
    fixed_r = [0, 0, last_r, last_r, 0, last_r, last_r // 2, last_r // 2, last_r // 2]
    fixed_c = [0, last_c, 0, last_c, last_c // 2, last_c // 2, 0, last_c, last_c // 2]
    rng = np.random.default_rng(seed)
    rows = np.concatenate([fixed_r, rng.integers(0, grid.rows, n_random)])
    cols = np.concatenate([fixed_c, rng.integers(0, grid.cols, n_random)])
    return rows, cols


def measured_edge_lengths(grid: Grid, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Geodesic lengths (m) of the 4 edges of each cell's footprint: N × 4."""
    to_lonlat = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
    corners = []
    for r, c in zip(rows, cols):
        minx, miny, maxx, maxy = grid.cell_bounds(int(r), int(c))
        corners.append([(minx, miny), (maxx, miny), (maxx, maxy), (minx, maxy)])
    xy = np.array(corners)                       # N × 4 × 2
    lon, lat = to_lonlat.transform(xy[..., 0], xy[..., 1])
    lon, lat = np.asarray(lon), np.asarray(lat)
    nxt = [1, 2, 3, 0]
    _, _, dist = GEOD.inv(lon.ravel(), lat.ravel(), lon[:, nxt].ravel(), lat[:, nxt].ravel())
    return np.asarray(dist).reshape(lon.shape)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("zoom", [1, 3, 5])
def test_continental_grid_cells_are_within_5_percent_of_nominal_footprint(family: str, zoom: int) -> None:
    grid = make_grid(USA, family, zoom)
    nominal = FAMILIES[family].footprint_m(zoom)
    assert grid.footprint == pytest.approx(nominal)
    rows, cols = sample_cells(grid)
    lengths = measured_edge_lengths(grid, rows, cols)
    error = np.abs(lengths / nominal - 1.0)
    assert error.max() < 0.05, f"worst cell edge off by {100 * error.max():.2f} %"
    # The LAEA grid really is better than the limit: cos(c/2) distortion ≈ 2–3 % at the corners.
    assert error.max() < 0.035
    # and it is not trivially tight: the corners of the USA do distort measurably
    assert error.max() > 0.005


def test_continental_grid_covers_the_whole_bbox() -> None:
    grid = make_grid(USA, "sentinel", 1)
    t = np.linspace(0, 1, 200)
    lon = np.concatenate([-125 + 59 * t, np.full_like(t, -66), -125 + 59 * t, np.full_like(t, -125)])
    lat = np.concatenate([np.full_like(t, 24), 24 + 26 * t, np.full_like(t, 50), 24 + 26 * t])
    x, y = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True).transform(lon, lat)
    minx, miny, maxx, maxy = grid.bounds
    assert np.all((x >= minx) & (x <= maxx) & (y >= miny) & (y <= maxy))
    # ... with less than one cell of slack on each side
    assert min(np.min(x) - minx, maxx - np.max(x), np.min(y) - miny, maxy - np.max(y)) < grid.stride


def test_web_mercator_grid_fails_the_footprint_measurement() -> None:
    """The same measurement catches a naive CRS: EPSG:3857 metres are cos(lat) ground metres."""
    grid = make_grid(USA, "sentinel", 1, crs="EPSG:3857", tolerance=None)
    rows, cols = sample_cells(grid, n_random=50)
    lengths = measured_edge_lengths(grid, rows, cols)
    error = np.abs(lengths / grid.footprint - 1.0)
    assert error.max() > 0.05
    # at 50°N a 3857 "2560 m" cell is about 2560·cos(50°) ≈ 1646 m on the ground
    assert lengths.min() == pytest.approx(2560 * np.cos(np.radians(50.0)), rel=0.02)


def test_distorting_user_crs_is_refused_with_one_line() -> None:
    with pytest.raises(InputError) as info:
        make_grid(USA, "sentinel", 1, crs="EPSG:3857")
    assert "5 %" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("text", ["-170,-60,170,60", "-180,-80,0,80", "-40,-60,40,60"])
def test_bbox_too_large_for_one_grid_is_refused(text: str) -> None:
    with pytest.raises(InputError) as info:
        make_grid(parse_bbox(text), "sentinel", 5)
    assert "too large" in str(info.value) and "\n" not in str(info.value)


def test_user_utm_crs_is_used_and_geographic_crs_is_refused() -> None:
    bbox = BBox(9.0, 48.0, 9.2, 48.1)
    grid = make_grid(bbox, "sentinel", 1, crs="EPSG:32632")
    assert grid.crs == "EPSG:32632"
    with pytest.raises(InputError, match="projected"):
        make_grid(bbox, "sentinel", 1, crs="EPSG:4326")
    with pytest.raises(InputError, match="not a CRS"):
        make_grid(bbox, "sentinel", 1, crs="EPSG:99999999")


def test_stride_makes_overlapping_cells_of_the_same_footprint() -> None:
    bbox = BBox(13.3, 52.4, 13.5, 52.6)
    plain = make_grid(bbox, "sentinel", 3)
    dense = make_grid(bbox, "sentinel", 3, stride=plain.footprint / 2)
    assert dense.stride == plain.footprint / 2 and dense.footprint == plain.footprint
    assert abs(dense.rows - 2 * plain.rows) <= 1 and abs(dense.cols - 2 * plain.cols) <= 1
    minx, miny, maxx, maxy = dense.cell_bounds(0, 0)
    assert maxx - minx == pytest.approx(dense.footprint) and maxy - miny == pytest.approx(dense.footprint)
    next_minx = dense.cell_bounds(0, 1)[0]
    assert next_minx - minx == pytest.approx(dense.stride)
    for bad in (0.0, -5.0, float("nan")):
        with pytest.raises(InputError, match="stride"):
            make_grid(bbox, "sentinel", 3, stride=bad)


def test_grid_dict_round_trip_is_json_safe() -> None:
    grid = make_grid(BBox(-0.2, 51.4, 0.1, 51.6), "bing", 5, stride=450.0)
    data = json.loads(json.dumps(grid.to_dict()))
    assert Grid.from_dict(data) == grid
    with pytest.raises(InputError):
        Grid.from_dict({k: v for k, v in data.items() if k != "rows"})


def test_centers_lonlat_agree_with_the_transform() -> None:
    grid = make_grid(BBox(-0.2, 51.4, 0.1, 51.6), "sentinel", 1)
    rows = np.array([0, 0, grid.rows - 1, 3])
    cols = np.array([0, grid.cols - 1, grid.cols - 1, 2])
    # pixel centre (c + 0.5, r + 0.5) through the affine, then to lon/lat independently
    x, y = grid.transform @ (cols + 0.5, rows + 0.5)
    lon_ref, lat_ref = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True).transform(x, y)
    lon, lat = grid.centers_lonlat(rows, cols)
    np.testing.assert_allclose(lon, lon_ref, atol=1e-9)
    np.testing.assert_allclose(lat, lat_ref, atol=1e-9)
    # the centre cell of the grid sits at the bbox centre (LAEA is centred there) within a cell
    assert grid.transform.a == grid.stride and grid.transform.e == -grid.stride
    cx, cy = grid.centers_xy(np.array([0]), np.array([0]))
    minx, miny, maxx, maxy = grid.cell_bounds(0, 0)
    assert (minx + maxx) / 2 == pytest.approx(cx[0]) and (miny + maxy) / 2 == pytest.approx(cy[0])
    assert grid.bounds[2] - grid.bounds[0] == pytest.approx(grid.cols * grid.stride)


def test_bbox_window_covers_the_sub_bbox_and_is_clipped_to_the_grid() -> None:
    region = BBox(13.0, 52.0, 13.6, 52.4)
    grid = make_grid(region, "sentinel", 1)  # 2560 m cells, LAEA centred on the region
    rows, cols = window_for_bbox(grid, BBox(13.2, 52.1, 13.4, 52.3))
    assert 0 < rows.start < rows.stop < grid.rows and 0 < cols.start < cols.stop < grid.cols
    # the window's cells cover the sub-bbox: its corners fall inside the window's pixels
    from pyproj import Transformer

    to_grid = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True)
    for lon, lat in [(13.2, 52.1), (13.4, 52.3), (13.2, 52.3), (13.4, 52.1)]:
        x, y = to_grid.transform(lon, lat)
        col, row = ~grid.transform @ (x, y)
        assert rows.start <= int(np.floor(row)) < rows.stop and cols.start <= int(np.floor(col)) < cols.stop
    whole = window_for_bbox(grid, BBox(12.0, 51.0, 14.0, 53.0))
    assert whole == (slice(0, grid.rows), slice(0, grid.cols))
    with pytest.raises(InputError, match="does not overlap"):
        window_for_bbox(grid, BBox(20.0, 40.0, 21.0, 41.0))


def test_subgrid_cells_are_the_cells_of_the_whole_grid() -> None:
    grid = make_grid(BBox(13.0, 52.0, 13.6, 52.4), "sentinel", 1)
    part = subgrid(grid, slice(2, 5), slice(3, 7))
    assert part.shape == (3, 4) and (part.crs, part.stride, part.footprint) == (grid.crs, grid.stride, grid.footprint)
    px, py = part.centers_xy(np.array([0, 2]), np.array([0, 3]))
    gx, gy = grid.centers_xy(np.array([2, 4]), np.array([3, 6]))
    np.testing.assert_allclose(px, gx)
    np.testing.assert_allclose(py, gy)
