"""``soundmap bga`` end to end: files on the query grid, --compare with a learned raster, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from soundmap.cli.main import run
from soundmap.geo.grid import Grid

from tests.fixtures.query_workspace import _built_query_workspace, query_env  # noqa: F401

from .conftest import BUILT, TREE, WATER, write_class_raster

BBOX = "10.0,50.0,10.05,50.03"
PATTERN = (10, 50, 80, 0)      # tree, built-up, water, nodata, cycled over the cells
WEIGHTS = {10: TREE, 50: BUILT, 80: WATER}


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A saved workspace (zoom 1, Sentinel family) over BBOX; no imagery is needed for `bga`."""
    from soundmap.tiles.sources import resolve_source
    from soundmap.pipeline.workspace import Workspace

    source = resolve_source("http://127.0.0.1:9/{z}/{x}/{y}.png", family="sentinel")
    ws = Workspace.create(tmp_path / "ws", source=source, zooms=[1], bbox=BBOX)
    ws.save()
    return ws.path


def _grid(workspace: Path) -> Grid:
    from soundmap.pipeline.workspace import Workspace

    return Workspace.load(workspace).grid(1)


@pytest.fixture
def cell_landcover(workspace: Path, tmp_path: Path) -> Path:
    """A 20 m land-cover raster in the grid's own CRS, one pure class per cell (PATTERN cycled)."""
    grid = _grid(workspace)
    per_cell = int(grid.stride // 20)
    codes = np.array(PATTERN, dtype=np.uint8)[np.arange(grid.rows * grid.cols) % len(PATTERN)]
    classes = codes.reshape(grid.rows, grid.cols).repeat(per_cell, 0).repeat(per_cell, 1)
    return write_class_raster(tmp_path / "cells.tif", classes, crs=grid.crs,
                              transform=Affine(20, 0, grid.x0, 0, -20, grid.y0))


def _expected(grid: Grid) -> np.ndarray:
    out = np.full((3, grid.rows, grid.cols), np.nan)
    for index in range(grid.rows * grid.cols):
        code = PATTERN[index % len(PATTERN)]
        if code in WEIGHTS:
            out[:, index // grid.cols, index % grid.cols] = WEIGHTS[code]
    return out


def test_bga_writes_float_and_uint8_composites_on_the_query_grid(workspace, cell_landcover, tmp_path, capsys) -> None:
    out = tmp_path / "out" / "bga.tif"
    code = run(["bga", "--workspace", str(workspace), "--landcover", str(cell_landcover), "--out", str(out), "-q"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out.split()
    assert printed == [str(out), str(out.with_name("bga_rgb.tif"))]
    grid = _grid(workspace)
    assert grid.rows * grid.cols >= 4
    with rasterio.open(out) as src:
        assert (src.count, src.dtypes[0], src.height, src.width) == (3, "float32", grid.rows, grid.cols)
        assert src.transform.almost_equals(grid.transform)
        assert rasterio.crs.CRS.from_user_input(grid.crs) == src.crs
        assert [d for d in src.descriptions] == ["Anthrophony", "Biophony", "Geophony"]
        values = src.read(masked=True).filled(np.nan)
    np.testing.assert_allclose(values, _expected(grid), atol=1e-6)
    with rasterio.open(out.with_name("bga_rgb.tif")) as src:
        assert (src.count, src.dtypes[0], src.nodata) == (3, "uint8", 0)
        assert src.transform.almost_equals(grid.transform)
        rgb = src.read()
    assert rgb[:, 0, 0].tolist() == [1, 255, 1 + round(0.3 * 254)]     # tree: A 0, B 1, G 0.3


def test_cells_outside_the_workspace_aoi_are_nodata(tmp_path, capsys) -> None:
    from soundmap.tiles.sources import resolve_source
    from soundmap.pipeline.workspace import Workspace

    aoi = tmp_path / "aoi.geojson"      # a triangle over the south-west half of the bbox
    aoi.write_text(json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {},
                   "geometry": {"type": "Polygon", "coordinates": [[[10.0, 50.0], [10.08, 50.0], [10.0, 50.05],
                                                                    [10.0, 50.0]]]}}]}))
    source = resolve_source("http://127.0.0.1:9/{z}/{x}/{y}.png", family="sentinel")
    ws = Workspace.create(tmp_path / "ws", source=source, zooms=[1], aoi=aoi)
    ws.save()
    grid = ws.grid(1)
    mask = ws.aoi_mask(1)
    assert mask.any() and not mask.all()
    per_cell = int(grid.stride // 40)
    classes = np.full((grid.rows * per_cell, grid.cols * per_cell), 80, dtype=np.uint8)
    landcover = write_class_raster(tmp_path / "water.tif", classes, crs=grid.crs,
                                   transform=Affine(40, 0, grid.x0, 0, -40, grid.y0))
    out = tmp_path / "bga.tif"
    assert run(["bga", "--workspace", str(ws.path), "--landcover", str(landcover), "--out", str(out), "-q"]) == 0
    with rasterio.open(out) as src:
        values = src.read(masked=True).filled(np.nan)
    assert np.array_equal(np.isfinite(values[0]), mask)
    np.testing.assert_allclose(values[:, mask].T, np.tile(WATER, (int(mask.sum()), 1)), atol=1e-6)


def test_weights_and_class_map_options_change_the_table(workspace, tmp_path, capsys) -> None:
    grid = _grid(workspace)
    per_cell = int(grid.stride // 40)
    user = np.array([1, 2, 9, 1], dtype=np.uint8)[np.arange(grid.rows * grid.cols) % 4].reshape(grid.shape)
    landcover = write_class_raster(tmp_path / "user.tif", user.repeat(per_cell, 0).repeat(per_cell, 1),
                                   crs=grid.crs, transform=Affine(40, 0, grid.x0, 0, -40, grid.y0), nodata=None)
    weights = tmp_path / "w.yaml"
    weights.write_text("classes:\n  10: {name: Tree cover, anthrophony: 0.1, biophony: 0.2, geophony: 0.3}\n"
                       "  50: {name: Built-up, anthrophony: 0.9, biophony: 0.0, geophony: 0.0}\n")
    class_map = tmp_path / "map.yaml"
    class_map.write_text("nodata: [9]\nclasses:\n  1: Tree cover\n  2: 50\n")
    out = tmp_path / "bga.tif"
    code = run(["bga", "--workspace", str(workspace), "--landcover", str(landcover), "--class-map", str(class_map),
                "--weights", str(weights), "--out", str(out), "-q"])
    assert code == 0, capsys.readouterr().err
    with rasterio.open(out) as src:
        values = src.read(masked=True).filled(np.nan)
    np.testing.assert_allclose(values[:, 0, 0], (0.1, 0.2, 0.3), atol=1e-6)
    np.testing.assert_allclose(values[:, 0, 1], (0.9, 0.0, 0.0), atol=1e-6)
    assert np.all(np.isnan(values[:, 1, 0]))            # value 9 is the class map's nodata


def test_compare_with_a_linear_transform_of_the_bga_bands_gives_r_one(workspace, cell_landcover, tmp_path,
                                                                        capsys) -> None:
    grid = _grid(workspace)
    learned = tmp_path / "learned.tif"
    expected = _expected(grid)
    bands = np.stack([2 * expected[0] + 0.5, 10 * expected[1] - 3, -expected[2]]).astype(np.float32)
    with rasterio.open(learned, "w", driver="GTiff", width=grid.cols, height=grid.rows, count=3, dtype="float32",
                       crs=grid.crs, transform=grid.transform, nodata=float("nan")) as dst:
        dst.write(bands)
    out = tmp_path / "bga.tif"
    code = run(["bga", "--workspace", str(workspace), "--landcover", str(cell_landcover), "--out", str(out),
                "--compare", "--learned", str(learned), "-q"])
    assert code == 0, capsys.readouterr().err
    report = json.loads(out.with_name("bga_compare.json").read_text())
    valid = int(np.all(np.isfinite(expected), axis=0).sum())
    assert report["bands"]["anthrophony"]["pearson"] == pytest.approx(1.0)
    assert report["bands"]["biophony"]["pearson"] == pytest.approx(1.0)
    assert report["bands"]["geophony"]["pearson"] == pytest.approx(-1.0)
    assert report["bands"]["geophony"]["spearman"] == pytest.approx(-1.0)
    assert report["bands"]["anthrophony"]["n"] == valid
    png = out.with_name("bga_compare.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bbox_without_workspace_makes_the_map_grid(lonlat_landcover, tmp_path, capsys, monkeypatch) -> None:
    from soundmap.geo.bbox import parse_bbox
    from soundmap.geo.grid import make_grid

    monkeypatch.chdir(tmp_path)        # no ./.soundmap here
    bbox = "9.995,49.997,10.005,50.003"
    out = tmp_path / "bga.tif"
    code = run(["bga", "--bbox", bbox, "--family", "bing", "--landcover", str(lonlat_landcover),
                "--out", str(out), "-q"])
    assert code == 0, capsys.readouterr().err
    grid = make_grid(parse_bbox(bbox), "bing", 1)
    with rasterio.open(out) as src:
        assert (src.height, src.width) == grid.shape
        assert src.transform.almost_equals(grid.transform)


def test_worldcover_url_option_reaches_the_reader(range_server, tmp_path, capsys, monkeypatch) -> None:
    from .test_ecology_worldcover import _serve_tile

    _serve_tile(range_server.root)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bga.tif"
    code = run(["bga", "--bbox", "10.49,49.545,10.51,49.555", "--family", "bing", "--worldcover-url",
                range_server.url, "--out", str(out), "-q"])
    assert code == 0, capsys.readouterr().err
    assert range_server.requests
    with rasterio.open(out) as src:
        values = src.read(masked=True)
        assert "ESA WorldCover" in src.tags()["attribution"]
    assert values.count() > 0


@pytest.mark.parametrize("args, message", [
    (["--compare", "only one", "two"], "exactly three text queries"),
    (["--compare", "--learned", "missing.tif"], "does not exist"),
    (["a", "b", "c"], "only used with --compare"),
    (["--class-map", "m.yaml"], "give --landcover too"),
    (["--weights", "nope.yaml"], "does not exist"),
    (["--worldcover-year", "2019"], "2021"),
])
def test_bad_input_is_one_line_and_exit_2(workspace, cell_landcover, tmp_path, capsys, args, message) -> None:
    (tmp_path / "m.yaml").write_text("classes:\n  1: 10\n")
    args = [a if not a.endswith(".yaml") else str(tmp_path / a) for a in args]
    code = run(["bga", "--workspace", str(workspace), "--out", str(tmp_path / "bga.tif"), "-q", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_missing_landcover_and_missing_region_are_exit_2(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert run(["bga", "--bbox", "10,50,10.01,50.01", "--landcover", str(tmp_path / "no.tif")]) == 2
    assert "--landcover" in capsys.readouterr().err
    assert run(["bga", "--landcover", str(tmp_path / "no.tif")]) == 2
    capsys.readouterr()
    assert run(["bga", "-q"]) == 2
    err = capsys.readouterr().err
    assert "--bbox" in err and len(err.strip().splitlines()) == 1


def test_learned_raster_on_another_grid_is_refused(workspace, cell_landcover, tmp_path, capsys) -> None:
    grid = _grid(workspace)
    learned = tmp_path / "other.tif"
    with rasterio.open(learned, "w", driver="GTiff", width=3, height=3, count=2, dtype="float32",
                       crs=grid.crs, transform=grid.transform) as dst:
        dst.write(np.zeros((2, 3, 3), np.float32))
    code = run(["bga", "--workspace", str(workspace), "--landcover", str(cell_landcover), "--out",
                str(tmp_path / "bga.tif"), "--learned", str(learned), "-q"])
    assert code == 2
    assert "needs three" in capsys.readouterr().err


def test_compare_scores_the_three_queries_with_the_query_library(query_env, tmp_path, capsys) -> None:
    from soundmap.pipeline.workspace import Workspace

    grid = Workspace.load(query_env.workspace).grid(1)
    classes = np.array([10, 50, 80, 40], dtype=np.uint8)[np.arange(grid.rows * grid.cols) % 4]
    per_cell = int(grid.stride // 40)
    landcover = write_class_raster(tmp_path / "lc.tif", classes.reshape(grid.shape).repeat(per_cell, 0)
                                   .repeat(per_cell, 1), crs=grid.crs, transform=Affine(40, 0, grid.x0, 0, -40, grid.y0))
    out = tmp_path / "bga.tif"
    code = run(["bga", "--workspace", str(query_env.workspace), "--landcover", str(landcover), "--out", str(out),
                "--compare", "traffic and people", "birds and insects", "wind and water", "-q", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    learned_path = out.with_name("bga_learned.tif")
    assert str(learned_path) in capsys.readouterr().out
    report = json.loads(out.with_name("bga_compare.json").read_text())
    assert report["queries"] == ["traffic and people", "birds and insects", "wind and water"]
    with rasterio.open(learned_path) as src:
        learned = src.read([1, 2, 3], masked=True).filled(np.nan).astype(float)
    with rasterio.open(out) as src:
        bga = src.read(masked=True).filled(np.nan).astype(float)
    valid = np.all(np.isfinite(learned), axis=0) & np.all(np.isfinite(bga), axis=0)
    assert valid.sum() == (~query_env.lacking).sum()     # cells without imagery have no learned score
    for k, band in enumerate(("anthrophony", "biophony", "geophony")):
        r = np.corrcoef(learned[k][valid], bga[k][valid])[0, 1]
        assert report["bands"][band]["pearson"] == pytest.approx(r, abs=1e-5)
        assert report["bands"][band]["n"] == valid.sum()


def test_bbox_window_matches_the_query_window(query_env, tmp_path, capsys) -> None:
    from soundmap.pipeline.workspace import Workspace

    grid = Workspace.load(query_env.workspace).grid(1)
    classes = np.full((grid.rows * 8, grid.cols * 8), 40, dtype=np.uint8)
    step = grid.stride / 8
    landcover = write_class_raster(tmp_path / "crop.tif", classes, crs=grid.crs,
                                   transform=Affine(step, 0, grid.x0, 0, -step, grid.y0))
    out = tmp_path / "bga.tif"
    code = run(["bga", "--workspace", str(query_env.workspace), "--landcover", str(landcover), "--out", str(out),
                "--bbox", "10.05,50.02,10.12,50.07", "--compare", "traffic", "birds", "wind", "-q",
                "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    with rasterio.open(out) as bga, rasterio.open(out.with_name("bga_learned.tif")) as learned:
        assert bga.shape == learned.shape and bga.shape != grid.shape
        assert bga.transform.almost_equals(learned.transform)


def test_learned_raster_on_the_workspace_grid_keeps_the_workspace_footprint(tmp_path) -> None:
    from soundmap.ecology.composite import bga_grid
    from soundmap.tiles.sources import resolve_source
    from soundmap.pipeline.workspace import Workspace

    source = resolve_source("http://127.0.0.1:9/{z}/{x}/{y}.png", family="sentinel")
    ws = Workspace.create(tmp_path / "ws", source=source, zooms=[1], bbox=BBOX, stride=1280.0)
    grid = ws.grid(1)
    learned = tmp_path / "learned.tif"
    with rasterio.open(learned, "w", driver="GTiff", width=grid.cols, height=grid.rows, count=3, dtype="float32",
                       crs=grid.crs, transform=grid.transform) as dst:
        dst.write(np.zeros((3, grid.rows, grid.cols), np.float32))
    got = bga_grid(ws, bbox=None, zoom=None, family="sentinel", stride=None, learned=learned)
    assert (got.footprint, got.stride, got.shape) == (2560.0, 1280.0, grid.shape)
    assert got.transform.almost_equals(grid.transform)
    alone = bga_grid(None, bbox=None, zoom=None, family="sentinel", stride=None, learned=learned)
    assert alone.footprint == 1280.0          # without a workspace: cells tile the raster
