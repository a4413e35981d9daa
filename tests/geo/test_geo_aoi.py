"""AOI files: read with geopandas, empty ones refused, and only cells intersecting the geometry kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from pyproj import Transformer

from soundmap.errors import InputError
from soundmap.geo.bbox import BBox
from soundmap.geo.grid import aoi_mask, make_grid, read_aoi
from tests.fixtures.footprints import footprint_lonlat

# An L-shaped polygon in Berlin (lon, lat): cells in the notch of the L must be dropped.
L_SHAPE = [(13.30, 52.45), (13.50, 52.45), (13.50, 52.50), (13.36, 52.50), (13.36, 52.60),
           (13.30, 52.60), (13.30, 52.45)]


def write_geojson(path: Path, rings: list[list[tuple[float, float]]]) -> Path:
    features = [{"type": "Feature", "properties": {"id": i},
                 "geometry": {"type": "Polygon", "coordinates": [[list(p) for p in ring]]}}
                for i, ring in enumerate(rings)]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def test_aoi_keeps_only_cells_intersecting_the_geometry(tmp_path: Path) -> None:
    bbox, geometry = read_aoi(write_geojson(tmp_path / "aoi.geojson", [L_SHAPE]))
    assert bbox.as_tuple() == pytest.approx((13.30, 52.45, 13.50, 52.60))
    grid = make_grid(bbox, "sentinel", 1)
    mask = aoi_mask(grid, geometry)
    assert mask.shape == grid.shape
    # Independent check in lon/lat: each cell's densified footprint against the lon/lat polygon.
    polygon = shapely.Polygon(L_SHAPE)
    expected = np.zeros(grid.shape, dtype=bool)
    for r in range(grid.rows):
        for c in range(grid.cols):
            lon, lat = footprint_lonlat(grid, r, c, 20)
            expected[r, c] = shapely.Polygon(np.column_stack([lon, lat])).intersects(polygon)
    np.testing.assert_array_equal(mask, expected)
    # the notch of the L (north-east) really is dropped, the arms kept
    assert 0 < mask.sum() < mask.size
    assert not mask[0, -1] and mask[-1, 0] and mask[0, 0]


def test_aoi_mask_of_a_far_away_geometry_is_empty() -> None:
    grid = make_grid(BBox(13.30, 52.45, 13.50, 52.60), "sentinel", 3)
    far = shapely.box(20.0, 40.0, 20.1, 40.1)
    assert not aoi_mask(grid, far).any()


def test_two_polygons_in_one_file_are_unioned(tmp_path: Path) -> None:
    a = [(13.30, 52.45), (13.32, 52.45), (13.32, 52.47), (13.30, 52.47), (13.30, 52.45)]
    b = [(13.48, 52.58), (13.50, 52.58), (13.50, 52.60), (13.48, 52.60), (13.48, 52.58)]
    bbox, geometry = read_aoi(write_geojson(tmp_path / "two.geojson", [a, b]))
    assert bbox.as_tuple() == pytest.approx((13.30, 52.45, 13.50, 52.60))
    mask = aoi_mask(make_grid(bbox, "sentinel", 1), geometry)
    assert mask[-1, 0] and mask[0, -1] and not mask[mask.shape[0] // 2, mask.shape[1] // 2]


def test_empty_or_unreadable_aoi_is_a_one_line_input_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.geojson"
    empty.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    garbage = tmp_path / "garbage.geojson"
    garbage.write_text("this is not geojson {")
    for path, needle in [(empty, "no geometry"), (garbage, "could not be read"),
                         (tmp_path / "absent.geojson", "does not exist")]:
        with pytest.raises(InputError) as info:
            read_aoi(path)
        assert needle in str(info.value) and "\n" not in str(info.value)


def test_aoi_beyond_85_degrees_is_refused(tmp_path: Path) -> None:
    ring = [(10.0, 84.0), (11.0, 84.0), (11.0, 86.0), (10.0, 86.0), (10.0, 84.0)]
    with pytest.raises(InputError, match="85"):
        read_aoi(write_geojson(tmp_path / "polar.geojson", [ring]))


def test_aoi_in_a_projected_crs_is_reprojected_to_lonlat(tmp_path: Path) -> None:
    import geopandas as gpd

    box_utm = shapely.box(390_000, 5_810_000, 394_000, 5_814_000)     # UTM 33N, Berlin-Spandau
    path = tmp_path / "aoi.gpkg"
    gpd.GeoDataFrame({"name": ["a"]}, geometry=[box_utm], crs="EPSG:32633").to_file(path, driver="GPKG")
    bbox, geometry = read_aoi(path)
    lon, lat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True).transform(392_000, 5_812_000)
    assert bbox.west < lon < bbox.east and bbox.south < lat < bbox.north
    assert geometry.contains(shapely.Point(lon, lat))
    grid = make_grid(bbox, "sentinel", 1)
    assert aoi_mask(grid, geometry).all()     # a 4 km square: every 2.56 km cell of its bbox touches it
