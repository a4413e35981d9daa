"""``soundmap map`` end to end: fetch (loopback tile server) → embed (tiny PSM) → query, in one call."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import Transformer

from soundmap.cli.main import run
from soundmap.pipeline.query import default_map_zoom
from soundmap.geo.bbox import parse_bbox
from tests.fixtures.query_workspace import QUERY_BBOX
from tests.fixtures.tileserver import TileServer


def test_map_runs_fetch_embed_and_query_in_one_call(installed_models: str, tile_server: TileServer,
                                                    tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    out = tmp_path / "map.tif"
    code = run(["map", "--bbox", QUERY_BBOX, "--text", "sound of insects", "--hour", "20", "--out", str(out),
                "--source", tile_server.xyz_template, "--model", installed_models, "--stride", "5000",
                "--png", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.split() == [str(out), str(tmp_path / "map.png")]
    assert tile_server.requests, "imagery came from the (loopback) tile server"
    with rasterio.open(out) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and ds.overviews(1)
        assert ds.res == (5000.0, 5000.0)  # the requested stride
        tags = ds.tags()
        data = ds.read(1)
        to_grid = Transformer.from_crs("EPSG:4326", ds.crs, always_xy=True)
        minx, miny, maxx, maxy = to_grid.transform_bounds(*map(float, QUERY_BBOX.split(",")), densify_pts=21)
        assert ds.bounds.left <= minx and ds.bounds.right >= maxx
        assert ds.bounds.bottom <= miny and ds.bounds.top >= maxy
    assert np.isfinite(data).all()  # every tile was served: no nodata
    assert json.loads(tags["metadata"]) == [{"latlon": "cell centre", "hour": 20}]
    assert json.loads(tags["query"]) == ["text: sound of insects"]
    assert tags["model"] == installed_models and tags["zoom"] == "1"
    # a second map of the same region reuses the workspace: nothing is fetched or fused again
    tile_server.requests.clear()
    code = run(["map", "--bbox", QUERY_BBOX, "--text", "rain", "--hour", "20", "--out", str(tmp_path / "rain.tif"),
                "--source", tile_server.xyz_template, "--model", installed_models, "--stride", "5000", "--quiet"])
    assert code == 0 and tile_server.requests == []


def test_map_zoom_default_follows_region_size() -> None:
    assert default_map_zoom(parse_bbox("10.0,50.0,10.5,50.5")) == 1   # ~36 × 56 km
    assert default_map_zoom(parse_bbox("10.0,50.0,12.0,51.0")) == 5   # ~143 × 111 km


def test_map_without_installed_model_and_no_tty_is_one_line_error(tile_server: TileServer, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from soundmap.models import registry

    pulls: list[str] = []
    monkeypatch.setattr(registry, "pull_model", lambda name, **kwargs: pulls.append(name))
    code = run(["map", "--bbox", QUERY_BBOX, "--text", "birds", "--out", str(tmp_path / "m.tif"),
                "--source", tile_server.xyz_template, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "soundmap models pull psm-geosound-sentinel-meta" in err
    assert pulls == [] and tile_server.requests == []  # declined: nothing downloaded
    assert not (tmp_path / "m.tif").exists()


def test_map_yes_pulls_the_default_sentinel_model_without_asking(
        tile_server: TileServer, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, _built_query_workspace, clap_files: Path) -> None:
    """The pull itself is the registry's (tested there, needs the network); here it installs the
    tiny model under the default name, so the rest of the command runs for real."""
    from soundmap.models import registry
    from soundmap.paths import model_dir

    monkeypatch.setenv("SOUNDMAP_CLAP_DIR", str(clap_files))
    pulls: list[str] = []

    def fake_pull(name: str, **kwargs) -> Path:
        pulls.append(name)
        target = model_dir() / name
        target.symlink_to(_built_query_workspace.models / "tiny-psm", target_is_directory=True)
        return target

    monkeypatch.setattr(registry, "pull_model", fake_pull)
    monkeypatch.setattr("soundmap.cli.query._confirm", lambda question: pytest.fail("--yes must not ask"))
    out = tmp_path / "m.tif"
    code = run(["map", "--bbox", QUERY_BBOX, "--text", "birds", "--out", str(out), "--stride", "5000",
                "--source", tile_server.xyz_template, "--yes", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert pulls == ["psm-geosound-sentinel-meta"] and out.exists()


def test_map_asks_before_a_large_download(installed_models: str, tile_server: TileServer, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("soundmap.pipeline.query.MAP_CONFIRM_ABOVE_TILES", 0)  # every download is "large"
    questions: list[str] = []
    monkeypatch.setattr("soundmap.cli.query._confirm", lambda question: questions.append(question) or False)
    code = run(["map", "--bbox", QUERY_BBOX, "--text", "birds", "--out", str(tmp_path / "m.tif"), "--stride", "5000",
                "--source", tile_server.xyz_template, "--model", installed_models, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "pass --yes" in err and len(questions) == 1 and "tiles" in questions[0]
    assert tile_server.requests == [] and not (tmp_path / "m.tif").exists()
