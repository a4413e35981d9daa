"""``soundmap bga --segmenter clipseg``: class proportions of segmented cell imagery → BGA.

The maths (proportions, nodata, the area-weighted mean over each rendered footprint) is checked with
a deterministic colour segmenter on crafted imagery with known class fractions per cell — a tiny
random CLIPSeg cannot be expected to recognise water. The real CLIPSeg path (downloaded from a
loopback hub) is checked for plumbing: the CLI's composite is exactly what segmenting each rendered
cell with that model and applying the same maths gives, on the query grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from soundmap.cli.main import run
from soundmap.ecology.segmentation import (class_maps_bga, grid_segmentation_bga, load_prompt_table,
                                           segment_codes)
from tests.fixtures.hf_server import hf_server  # noqa: F401  (fixture)
from tests.fixtures.study_models import CLIPSEG_REPO, save_tiny_clipseg

BBOX = "10.0,50.0,10.09,50.05"
WATER, BUILDING, TREES = (0.0, 0.3, 1.0), (1.0, 0.1, 0.0), (0.0, 1.0, 0.3)   # (A, B, G) of Table 1
PALETTE = {"water": (30, 60, 200), "building": (150, 150, 150), "trees and vegetation": (30, 140, 40)}


class ColourSegmenter:
    """Each pixel → the prompt whose palette colour is nearest (prompts without one never win)."""

    def segment(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        colours = np.array([PALETTE.get(p, (1e6, 1e6, 1e6)) for p in prompts], dtype=np.float64)
        pixels = np.asarray(images, dtype=np.float64)[..., None, :]
        return np.argmin(((pixels - colours) ** 2).sum(axis=-1), axis=-1).astype(np.int32)


def test_packaged_table_is_the_studys_aerial_table() -> None:
    prompts = load_prompt_table()
    names = [prompts.table.names[c] for c in prompts.codes]
    assert names == ["Grassland", "Forest / Vegetation", "Wetlands", "Waterbody", "Bare land",
                     "Road / Sidewalk", "Building", "Vehicles", "Cropland"]
    weights = {prompts.table.names[c]: prompts.table.weights[c] for c in prompts.codes}
    assert weights["Waterbody"] == WATER and weights["Building"] == BUILDING
    assert weights["Cropland"] == (0.3, 1.0, 0.0) and weights["Vehicles"] == (1.0, 0.0, 0.0)
    assert prompts.prompts[3] == "water" and prompts.table.nodata == frozenset({0})


def test_class_proportions_and_nodata_by_hand() -> None:
    table = load_prompt_table().table
    maps = np.zeros((2, 4, 8), dtype=np.int32)
    maps[0, :, :4] = 4            # half water
    maps[0, :, 4:6] = 7           # a quarter building
    maps[0, :, 6:] = 0            # a quarter nodata: excluded from the mean
    maps[1] = 0                   # nothing valid
    result = class_maps_bga(maps, table)
    np.testing.assert_allclose(result.values[:, 0], np.array(WATER) * 2 / 3 + np.array(BUILDING) / 3)
    assert np.all(np.isnan(result.values[:, 1]))
    np.testing.assert_allclose(result.valid_fraction, [0.75, 0.0])
    k = {c: i for i, c in enumerate(result.codes)}
    assert result.proportions[0, k[4]] == pytest.approx(2 / 3) and result.proportions[0, k[7]] == pytest.approx(1 / 3)


def _grid():
    from soundmap.geo.bbox import parse_bbox
    from soundmap.geo.grid import make_grid

    return make_grid(parse_bbox(BBOX), "sentinel", 1)


def _crafted_raster(path: Path, grid) -> tuple[Path, np.ndarray]:
    """RGB imagery in the grid's CRS, 20 m pixels: in cell (r, c) the left fraction f of water,
    then building, and a band of trees in odd cells' top quarter. Returns (path, expected 3×rows×cols)."""
    per = int(grid.stride // 20)
    img = np.zeros((grid.rows * per, grid.cols * per, 3), dtype=np.uint8)
    expected = np.zeros((3, grid.rows, grid.cols))
    for r in range(grid.rows):
        for c in range(grid.cols):
            f = (1 + (r * grid.cols + c) % 4) / 5          # 0.2, 0.4, 0.6, 0.8
            cell = img[r * per:(r + 1) * per, c * per:(c + 1) * per]
            split = int(round(f * per))
            cell[:, :split] = PALETTE["water"]
            cell[:, split:] = PALETTE["building"]
            trees = (r + c) % 2 == 1
            if trees:
                cell[: per // 4] = PALETTE["trees and vegetation"]
            share = 0.25 if trees else 0.0
            expected[:, r, c] = ((1 - share) * (f * np.array(WATER) + (1 - f) * np.array(BUILDING))
                                 + share * np.array(TREES))
    with rasterio.open(path, "w", driver="GTiff", width=img.shape[1], height=img.shape[0], count=3, dtype="uint8",
                       crs=grid.crs, transform=Affine(20, 0, grid.x0, 0, -20, grid.y0)) as dst:
        dst.write(img.transpose(2, 0, 1))
    return path, expected


def test_segmented_cells_give_the_expected_bga_within_tolerance(tmp_path: Path) -> None:
    from soundmap.tiles.sources import resolve_source

    grid = _grid()
    assert grid.rows * grid.cols >= 4
    raster, expected = _crafted_raster(tmp_path / "rgb.tif", grid)
    source = resolve_source(str(raster))
    result = grid_segmentation_bga(grid, source, None, ColourSegmenter(), load_prompt_table())
    np.testing.assert_allclose(result.values, expected, atol=0.02)
    np.testing.assert_allclose(result.valid_fraction, 1.0)
    mask = np.zeros((grid.rows, grid.cols), dtype=bool)
    mask[0, 0] = True                    # masked cells stay nodata, as in query outputs
    masked = grid_segmentation_bga(grid, source, None, ColourSegmenter(), load_prompt_table(), mask=mask)
    assert np.isfinite(masked.values[:, 0, 0]).all() and np.isnan(masked.values[:, ~mask]).all()


def test_clipseg_composite_from_the_cli_on_the_query_grid(hf_server, tmp_path: Path, monkeypatch, capsys) -> None:
    from soundmap.models.clipseg import CLIPSegSegmenter
    from soundmap.tiles.render import render_cells
    from soundmap.tiles.sources import resolve_source

    hf_server.add_dir(CLIPSEG_REPO, save_tiny_clipseg(tmp_path / "clipseg"))
    monkeypatch.chdir(tmp_path)
    grid = _grid()
    raster, _ = _crafted_raster(tmp_path / "rgb.tif", grid)
    out = tmp_path / "seg" / "bga.tif"
    code = run(["bga", "--segmenter", "clipseg", "--source", str(raster), "--bbox", BBOX, "--out", str(out), "-q"])
    assert code == 0, capsys.readouterr().err
    assert capsys.readouterr().out.split() == [str(out), str(out.with_name("bga_rgb.tif"))]
    assert hf_server.downloads("model.safetensors")
    with rasterio.open(out) as src:
        assert (src.count, src.height, src.width) == (3, grid.rows, grid.cols)
        assert src.transform.almost_equals(grid.transform)
        assert "clipseg" in src.tags()["landcover"]
        values = src.read().astype(np.float64)
    # the same model and maths, applied by hand to each rendered cell
    model = CLIPSegSegmenter(next(Path(hf_server_cache()).rglob("snapshots/*/config.json")).parent)
    rows, cols = np.meshgrid(np.arange(grid.rows), np.arange(grid.cols), indexing="ij")
    images, ok = render_cells(grid, rows.ravel(), cols.ravel(), resolve_source(str(raster)), None)
    assert ok.all()
    prompts = load_prompt_table()
    by_hand = class_maps_bga(segment_codes(model, images, prompts), prompts.table).values
    np.testing.assert_allclose(values.reshape(3, -1), by_hand, atol=1e-6)
    weights = np.array([prompts.table.weights[c] for c in prompts.codes])
    assert np.all(values.reshape(3, -1).T >= weights.min(axis=0) - 1e-6)
    assert np.all(values.reshape(3, -1).T <= weights.max(axis=0) + 1e-6)


def hf_server_cache() -> Path:
    from soundmap.hub import hub_settings

    return hub_settings().cache_dir


def test_bad_segmenter_requests_are_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    for argv, needle in ((["--segmenter", "segearth-ov"], "segearth-ov is not available"),
                         (["--segmenter", "sam"], "is not one of worldcover, clipseg, segearth-ov"),
                         (["--segmenter", "clipseg"], "needs imagery: give --source")):
        assert run(["bga", "--bbox", BBOX, "-q", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err
