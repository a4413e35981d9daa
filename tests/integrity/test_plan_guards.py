"""Planning is refused from a cheap count, before anything per cell is allocated: a CRS that
cannot hold the bbox, a stride that multiplies the cells, a plan over budget or over the
download confirmation threshold."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from soundmap.cli.main import run
from soundmap.errors import InputError
from soundmap.geo.bbox import parse_bbox
from soundmap.geo.grid import make_grid
from soundmap.geo.planguard import check_plan, estimate_tiles
from soundmap.tiles.sources import resolve_source
from soundmap.pipeline.workspace import Workspace, plan_zoom
from tests.fixtures.tileserver import TileServer


def test_a_utm_grid_cannot_hold_the_whole_world() -> None:
    with pytest.raises(InputError, match="cannot cover this bbox"):
        make_grid(parse_bbox("-180,-85,180,85"), "sentinel", 1, crs="EPSG:32633")
    make_grid(parse_bbox("14,50,16,51"), "sentinel", 1, crs="EPSG:32633")   # its own zone is fine


def test_a_tiny_stride_is_refused_naming_the_multiplier(monkeypatch: pytest.MonkeyPatch) -> None:
    grid = make_grid(parse_bbox("10,50,10.1,50.05"), "sentinel", 1, stride=1)
    tracemalloc.start()
    with pytest.raises(InputError, match=r"--stride 1 m under the 2560 m footprint multiplies the cells by 6,553,600"):
        check_plan([grid], None, yes=False)
    assert tracemalloc.get_traced_memory()[1] < 2**20
    tracemalloc.stop()
    monkeypatch.setenv("SOUNDMAP_MAX_CELLS", "10")
    small = make_grid(parse_bbox("10,50,10.2,50.1"), "sentinel", 1)
    with pytest.raises(InputError, match="over the planning budget of 10"):
        check_plan([small], None, yes=False)
    assert check_plan([small], None, yes=True).cells == small.rows * small.cols


def test_the_tile_estimate_is_close_to_the_exact_plan(tiles_yaml: Path, tmp_path: Path) -> None:
    source = resolve_source("test-xyz", config_path=tiles_yaml)
    ws = Workspace.create(tmp_path / "ws", source=source, zooms=[1], bbox="10.0,50.0,10.3,50.2")
    exact = plan_zoom(ws, 1).n_tiles
    assert exact <= estimate_tiles(ws.grid(1), source) <= 2 * exact + 8


def test_a_large_fetch_is_refused_before_planning(tile_server: TileServer, tmp_path: Path, capsys,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import soundmap.pipeline.workspace as workspace_module

    def planned(*args, **kwargs):
        raise AssertionError("the tiles were listed before the refusal")

    monkeypatch.setattr(workspace_module, "plan_zoom", planned)
    tiles_yaml = tile_server.write_tiles_yaml(tmp_path / "tiles.yaml")
    code = run(["tiles", "fetch", "--bbox", "-125,24,-66,50", "--zoom", "1", "--source", "test-xyz",
                "--tiles-config", str(tiles_yaml), "--workspace", str(tmp_path / "usa")])
    err = capsys.readouterr().err
    assert code == 2 and "this downloads about" in err and "--yes" in err


def test_map_with_a_tiny_stride_is_refused_before_any_tile(installed_models: str, tile_server: TileServer,
                                                           tmp_path: Path, capsys) -> None:
    code = run(["map", "--bbox", "10.0,50.0,10.2,50.1", "--text", "birds", "--out", str(tmp_path / "m.tif"),
                "--stride", "1", "--source", tile_server.xyz_template, "--model", installed_models, "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "multiplies the cells by" in err and len(err.splitlines()) == 1
    assert tile_server.requests == []
