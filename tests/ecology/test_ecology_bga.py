"""BGA tables and the area-weighted per-cell means, against values computed by hand."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from soundmap.errors import ConfigError, InputError
from soundmap.ecology.bga import class_areas_in_rectangles, load_class_map, load_weights
from soundmap.ecology.landcover import LocalRasterSource, grid_bga, points_bga
from soundmap.geo.grid import Grid

from .conftest import BUILT, CROP, LAEA_10_50, TREE, WATER, mix, write_class_raster

NAN3 = (math.nan, math.nan, math.nan)


def assert_cells(values: np.ndarray, expected: dict[tuple[int, int], tuple[float, float, float]],
                 tol: float = 1e-9) -> None:
    for (r, c), triple in expected.items():
        got = values[:, r, c]
        if all(math.isnan(v) for v in triple):
            assert np.all(np.isnan(got)), f"cell {(r, c)} should be nodata, got {got}"
        else:
            np.testing.assert_allclose(got, triple, atol=tol, err_msg=f"cell {(r, c)}")


def test_packaged_table_is_the_study_table_mapped_onto_worldcover() -> None:
    table = load_weights()
    expected = {  # (anthrophony, biophony, geophony), from bga.md's correspondence
        10: (0, 1, 0.3), 20: (0, 1, 0.3), 30: (0, 1, 0.3), 100: (0, 1, 0.3),   # forest/vegetation, grassland
        40: (0.3, 1, 0),                                                      # cropland
        50: (1, 0.1, 0),                                                      # building
        60: (1, 0.1, 0.1),                                                    # bare land
        70: (0, 0, 0.3),                                                      # snow/ice: Geo-only (our choice)
        80: (0, 0.3, 1),                                                      # waterbody
        90: (0, 1, 0.3), 95: (0, 1, 0.3),                                     # wetlands
    }
    assert dict(table.weights) == {k: tuple(float(x) for x in v) for k, v in expected.items()}
    assert table.nodata == frozenset({0})


def test_class_areas_count_partial_pixels_by_area() -> None:
    index = np.array([[0, 1], [2, 3]])          # 3 = not a weighted class: counted nowhere
    got = class_areas_in_rectangles(index, 3, np.array([0.5, 0.0, 0.2]), np.array([0.25, 0.0, 0.1]),
                                    np.array([1.5, 2.0, 0.6]), np.array([1.75, 2.0, 0.5]))
    # half of each column × three quarters of each row = 0.375 of each pixel; the whole raster;
    # a 0.4 × 0.4 square inside pixel (0, 0)
    np.testing.assert_allclose(got, [[0.375, 0.375, 0.375], [1, 1, 1], [0.16, 0, 0]])


def test_class_areas_match_brute_force_counts_on_a_random_raster() -> None:
    rng = np.random.default_rng(0)
    index = rng.integers(0, 5, size=(40, 50))   # classes 0..3, 4 = invalid
    u0 = rng.integers(0, 40, size=30)
    v0 = rng.integers(0, 30, size=30)
    u1, v1 = u0 + rng.integers(1, 10, size=30), v0 + rng.integers(1, 10, size=30)
    got = class_areas_in_rectangles(index, 4, u0, v0, u1, v1)
    for i in range(30):
        window = index[v0[i]:v1[i], u0[i]:u1[i]]
        assert got[i].tolist() == pytest.approx([(window == k).sum() for k in range(4)])


def test_utm_cells_get_exact_area_weighted_means(utm_landcover: Path) -> None:
    grid = Grid(crs="EPSG:32632", x0=500000, y0=5000300, stride=100, footprint=100, rows=3, cols=4,
                zoom=1, family="sentinel")
    result = grid_bga(grid, LocalRasterSource(utm_landcover), load_weights())
    half_half = mix((0.5, TREE), (0.5, BUILT))
    assert half_half == pytest.approx((0.5, 0.55, 0.15))
    assert_cells(result.values, {
        (0, 0): TREE, (0, 1): half_half, (0, 2): BUILT, (0, 3): BUILT,
        (1, 0): WATER, (1, 1): NAN3, (1, 2): CROP, (1, 3): CROP,   # (1, 2) is half nodata: crop weights
        (2, 0): WATER, (2, 1): NAN3, (2, 2): CROP, (2, 3): CROP,
    })
    np.testing.assert_allclose(result.valid_fraction[1], [1.0, 0.0, 0.5, 1.0])
    assert result.values.dtype == np.float32


def test_overlapping_footprints_use_their_whole_footprint(utm_landcover: Path) -> None:
    # stride 50 < footprint 100: centres x = 500125, 500175, 500225 on y = 5000250
    grid = Grid(crs="EPSG:32632", x0=500100, y0=5000275, stride=50, footprint=100, rows=1, cols=3,
                zoom=1, family="sentinel")
    result = grid_bga(grid, LocalRasterSource(utm_landcover), load_weights())
    assert_cells(result.values, {
        (0, 0): mix((0.75, TREE), (0.25, BUILT)),   # box 75–175: tree up to 150
        (0, 1): mix((0.25, TREE), (0.75, BUILT)),   # box 125–225
        (0, 2): BUILT,
    })
    np.testing.assert_allclose(result.values[:, 0, 0], (0.25, 0.775, 0.225), atol=1e-9)


def test_lonlat_landcover_is_reprojected_onto_an_equal_area_grid(lonlat_landcover: Path) -> None:
    # 3 × 3 cells of 200 m centred on (10 E, 50 N), where the four quadrants meet
    grid = Grid(crs=LAEA_10_50, x0=-300, y0=300, stride=200, footprint=200, rows=3, cols=3, zoom=1,
                family="sentinel")
    result = grid_bga(grid, LocalRasterSource(lonlat_landcover), load_weights())
    assert_cells(result.values, {
        (0, 0): TREE, (0, 1): mix((0.5, TREE), (0.5, BUILT)), (0, 2): BUILT,
        (1, 0): mix((0.5, TREE), (0.5, WATER)),
        (1, 1): mix((0.25, TREE), (0.25, BUILT), (0.25, WATER)),   # a quarter is nodata
        (1, 2): BUILT,                                             # half built-up, half nodata
        (2, 0): WATER, (2, 1): WATER, (2, 2): NAN3,
    }, tol=1e-6)
    np.testing.assert_allclose(result.values[:, 1, 1], (1 / 3, 1.4 / 3, 1.3 / 3), atol=1e-6)
    np.testing.assert_allclose(result.valid_fraction, [[1, 1, 1], [1, 0.75, 0.5], [1, 0.5, 0]], atol=1e-6)


def test_points_get_footprints_centred_on_them(lonlat_landcover: Path) -> None:
    result = points_bga([10.0, 9.995], [50.0, 50.002], 200.0, LocalRasterSource(lonlat_landcover), load_weights())
    np.testing.assert_allclose(result.values[:, 0], (1 / 3, 1.4 / 3, 1.3 / 3), atol=1e-6)
    np.testing.assert_allclose(result.values[:, 1], TREE, atol=1e-9)


def test_unknown_codes_are_nodata_and_reported(tmp_path: Path) -> None:
    classes = np.full((10, 10), 80, dtype=np.uint8)
    classes[:, 5:] = 7                                  # not a WorldCover class
    path = write_class_raster(tmp_path / "odd.tif", classes, crs="EPSG:32632",
                              transform=Affine(10, 0, 500000, 0, -10, 5000100))
    grid = Grid(crs="EPSG:32632", x0=500000, y0=5000100, stride=100, footprint=100, rows=1, cols=1,
                zoom=1, family="sentinel")
    result = grid_bga(grid, LocalRasterSource(path), load_weights())
    np.testing.assert_allclose(result.values[:, 0, 0], WATER)
    assert result.valid_fraction[0, 0] == pytest.approx(0.5)
    assert set(result.unmapped) == {7}


def test_class_map_maps_user_codes_onto_the_table(tmp_path: Path) -> None:

    classes = np.array([[1, 2], [3, 255]], dtype=np.uint8).repeat(5, 0).repeat(5, 1)
    path = write_class_raster(tmp_path / "user.tif", classes, crs="EPSG:32632",
                              transform=Affine(10, 0, 500000, 0, -10, 5000100), nodata=None)
    class_map = tmp_path / "map.yaml"
    class_map.write_text("nodata: [255]\nclasses:\n  1: 10\n  2: built-up\n"
                         "  3: {anthrophony: 0.2, biophony: 0.4, geophony: 0.6}\n")
    table = load_class_map(class_map, load_weights())
    grid = Grid(crs="EPSG:32632", x0=500000, y0=5000100, stride=100, footprint=100, rows=1, cols=1,
                zoom=1, family="sentinel")
    result = grid_bga(grid, LocalRasterSource(path), table)
    np.testing.assert_allclose(result.values[:, 0, 0], mix((1, TREE), (1, BUILT), (1, (0.2, 0.4, 0.6))))
    assert result.unmapped == {}


@pytest.mark.parametrize("text, message", [
    ("classes:\n  10: {anthrophony: 1.5, biophony: 0, geophony: 0}\n", "outside [0, 1]"),
    ("classes:\n  10: {anthrophony: 1, biophony: 0}\n", "missing geophony"),
    ("classes: [1, 2\n", "not valid YAML"),
    ("nodata: [10]\nclasses:\n  10: {anthrophony: 1, biophony: 0, geophony: 0}\n", "both nodata"),
    ("classes:\n  ten: {anthrophony: 1, biophony: 0, geophony: 0}\n", "not an integer"),
])
def test_bad_weight_tables_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_weights(path)


def test_class_map_to_an_unknown_class_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("classes:\n  1: lava\n")
    with pytest.raises(ConfigError, match="not a class of the BGA table"):
        load_class_map(path, load_weights())


def test_float_landcover_is_refused(tmp_path: Path) -> None:
    import rasterio

    path = tmp_path / "f.tif"
    with rasterio.open(path, "w", driver="GTiff", width=2, height=2, count=1, dtype="float32", crs="EPSG:32632",
                       transform=Affine(10, 0, 0, 0, -10, 0)) as dst:
        dst.write(np.zeros((1, 2, 2), np.float32))
    with pytest.raises(InputError, match="integer class codes"):
        LocalRasterSource(path)
