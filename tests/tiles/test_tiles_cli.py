"""`soundmap tiles ...` end to end against the loopback server, and the CLI's error contract."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import typer

import soundmap.cli.tiles as tiles_cli
import soundmap.tiles.fetch as fetch_module
from soundmap.cli.main import app, run
from soundmap.geo.tileplan import tiles_for_grid
from soundmap.pipeline.workspace import Workspace
from tests.fixtures.tileserver import TileServer

BBOX = "13.35,52.45,13.45,52.52"


@pytest.fixture(autouse=True)
def _no_backoff_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries still happen (the server counts them); only the waits between them are skipped."""
    monkeypatch.setattr(fetch_module, "_pause", lambda stop, seconds: None)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run the real entry point; return (exit code, stdout, stderr)."""

    def invoke(*args: str) -> tuple[int, str, str]:
        code = run(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


def _expected_tiles(ws: Workspace) -> set[tuple[int, int, int]]:
    wanted: set[tuple[int, int, int]] = set()
    for zoom in ws.zooms:
        z, xy = tiles_for_grid(ws.grid(zoom), ws.source())
        wanted |= {(z, x, y) for x, y in xy}
    return wanted


def test_fetch_requests_exactly_the_planned_tiles_once_and_records_the_workspace(
        cli, tile_server: TileServer, tiles_yaml: Path, tmp_path: Path) -> None:
    ws_dir = tmp_path / "ws"
    code, _, err = cli("tiles", "fetch", "--bbox", BBOX, "--source", "test-xyz", "--zoom", "1,3,5",
                       "--tiles-config", str(tiles_yaml), "--workspace", str(ws_dir), "--workers", "8", "--quiet")
    assert code == 0, err
    ws = Workspace.load(ws_dir)
    wanted = _expected_tiles(ws)
    assert {z for z, _, _ in wanted} == {14, 12, 11}  # one web-mercator zoom per PSM zoom
    assert tile_server.tile_counts == {t: 1 for t in wanted}
    assert ws.tile_cache().missing(ws.source().cache_key, wanted) == []
    assert ws.zooms == [1, 3, 5] and ws.source().name == "test-xyz"
    tile_server.reset_counts()
    code, _, _ = cli("tiles", "fetch", "--workspace", str(ws_dir), "--quiet")  # everything recorded
    assert code == 0 and tile_server.requests == []  # a second run downloads nothing


def test_dry_run_prints_the_plan_and_touches_nothing(cli, tile_server: TileServer, tiles_yaml: Path,
                                                     tmp_path: Path) -> None:
    code, out, _ = cli("tiles", "fetch", "--bbox", BBOX, "--source", "test-xyz", "--zoom", "1",
                       "--tiles-config", str(tiles_yaml), "--workspace", str(tmp_path / "ws"), "--dry-run")
    assert code == 0 and tile_server.requests == [] and not (tmp_path / "ws").exists()
    assert "zoom 1: 4×3 cells, web-mercator z14, 48 tiles" in out
    assert "48 tiles, 0 cached, 48 to download (≈48.0 KB)" in out  # bytes_per_tile 1000 in the test yaml


def test_large_downloads_need_yes_when_not_interactive(cli, tile_server: TileServer, tiles_yaml: Path,
                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiles_cli, "CONFIRM_ABOVE_TILES", 10)
    args = ("tiles", "fetch", "--bbox", BBOX, "--source", "test-xyz", "--tiles-config", str(tiles_yaml),
            "--workspace", str(tmp_path / "ws"), "--quiet")
    code, _, err = cli(*args)
    assert code == 2 and "re-run with --yes" in err and tile_server.requests == []
    code, _, _ = cli(*args, "--yes")
    assert code == 0 and len(tile_server.tile_counts) == 48


def test_missing_imagery_exits_2_naming_cells_and_how_to_retry(cli, tile_server: TileServer, tiles_yaml: Path,
                                                               tmp_path: Path) -> None:
    ws_dir = tmp_path / "ws"
    broken = (14, 8800, 5373)
    tile_server.server_error[broken] = 10**9
    code, _, err = cli("tiles", "fetch", "--bbox", BBOX, "--source", "test-xyz", "--tiles-config", str(tiles_yaml),
                       "--workspace", str(ws_dir), "--quiet")
    ws = Workspace.load(ws_dir)
    assert broken in _expected_tiles(ws)
    assert code == 2
    assert "1 tiles could not be fetched (HTTP 500 ×1)" in err
    assert "zoom 1: " in err and "cells lack imagery (e.g. row " in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("soundmap: error: ") and f"soundmap tiles fetch --workspace {ws_dir}" in last
    tile_server.server_error.clear()
    tile_server.reset_counts()
    code, _, err = cli("tiles", "fetch", "--workspace", str(ws_dir), "--quiet")  # the retry it suggested
    assert code == 0, err
    assert tile_server.tile_counts == {broken: 1}


def test_source_as_raw_template_and_as_raster(cli, tile_server: TileServer, tmp_path: Path) -> None:
    code, _, err = cli("tiles", "fetch", "--bbox", BBOX, "--source", tile_server.zyx_template, "--family", "sentinel",
                       "--workspace", str(tmp_path / "a"), "--quiet")
    assert code == 0, err
    ws = Workspace.load(tmp_path / "a")
    assert ws.source().kind == "xyz" and ws.source_spec == tile_server.zyx_template
    assert all(path.startswith("/zyx/14/") for path in tile_server.requests) and len(tile_server.requests) == 48

    import rasterio
    from rasterio.transform import from_origin

    raster = tmp_path / "s2.tif"
    with rasterio.open(raster, "w", driver="GTiff", width=4, height=4, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(385000, 5815000, 10, 10)) as dst:
        dst.write(np.zeros((3, 4, 4), dtype=np.uint8))
    tile_server.reset_counts()
    code, _, err = cli("tiles", "fetch", "--bbox", BBOX, "--source", str(raster), "--workspace", str(tmp_path / "b"),
                       "--quiet")
    assert code == 0, err
    src = Workspace.load(tmp_path / "b").source()
    assert (src.kind, src.family, src.url) == ("file", "sentinel", str(raster.resolve()))
    assert tile_server.requests == []


def test_info_reports_grids_and_cache(cli, tile_server: TileServer, tiles_yaml: Path, tmp_path: Path) -> None:
    ws_dir = tmp_path / "ws"
    tile_server.not_found.add((11, 1100, 672))
    code, _, _ = cli("tiles", "fetch", "--bbox", BBOX, "--source", "test-xyz", "--zoom", "1,5",
                     "--tiles-config", str(tiles_yaml), "--workspace", str(ws_dir), "--quiet")
    ws = Workspace.load(ws_dir)
    assert (11, 1100, 672) in _expected_tiles(ws) and code == 2
    code, out, _ = cli("tiles", "info", "--workspace", str(ws_dir))
    assert code == 0
    assert "region      bbox 13.35000,52.45000,13.45000,52.52000" in out
    assert "zoom 1      grid 4×3 cells" in out and "z14: 48 tiles cached, 0 missing" in out
    assert "z11: 3 tiles cached, 1 missing" in out and "attribution Test tiles (c) nobody" in out
    assert "51 tiles in all" in out


def test_sources_lists_names_licences_and_default(cli, tiles_yaml: Path) -> None:
    code, out, _ = cli("tiles", "sources")
    assert code == 0
    assert "* s2cloudless " in out and "  s2cloudless-2016 " in out and "key $BING_MAPS_KEY" in out
    code, out, _ = cli("tiles", "sources", "--tiles-config", str(tiles_yaml))
    assert "* test-xyz " in out and "licence: CC0 test data" in out


def test_usage_errors_exit_2_without_traceback(cli) -> None:
    code, _, err = cli("tiles", "fetch", "--bogus")
    assert code == 2 and "No such option: --bogus" in err and "Traceback" not in err
    code, _, err = cli("tiles", "fetch", "--workers", "many")
    assert code == 2 and "--workers" in err


@pytest.mark.parametrize(("args", "message"), [
    (["--bbox", "1,2,3"], "--bbox expects 4 numbers"),
    (["--bbox", BBOX, "--zoom", "2"], "zoom level 2 is not a PSM zoom level"),
    (["--bbox", BBOX, "--source", "nowhere"], "unknown --source 'nowhere'"),
    (["--bbox", BBOX, "--workers", "0"], "--workers must be between 1 and 256"),
    (["--bbox", BBOX, "--aoi", "x.geojson"], "not both"),
    (["--bbox", BBOX, "--family", "landsat"], "unknown imagery family"),
    (["--bbox", BBOX, "--tiles-config", "/no/such.yaml"], "does not exist"),
    (["--bbox", BBOX, "--crs", "EPSG:4326"], "not a projected CRS"),
    ([], "give --bbox W,S,E,N or --aoi FILE"),
])
def test_bad_fetch_inputs_exit_2_with_one_line(cli, tmp_path: Path, args: list[str], message: str) -> None:
    code, out, err = cli("tiles", "fetch", *args, "--workspace", str(tmp_path / "ws"), "--dry-run")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_missing_api_key_and_missing_workspace_exit_2(cli, tile_server: TileServer, tiles_yaml: Path,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOUNDMAP_TEST_KEY", raising=False)
    code, _, err = cli("tiles", "fetch", "--bbox", BBOX, "--source", "test-quadkey", "--tiles-config",
                       str(tiles_yaml), "--workspace", str(tmp_path / "ws"), "--quiet")
    assert code == 2 and "set the environment variable SOUNDMAP_TEST_KEY" in err and tile_server.requests == []
    code, _, err = cli("tiles", "info", "--workspace", str(tmp_path / "nothing"))
    assert code == 2 and "no workspace at" in err and len(err.strip().splitlines()) == 1


def test_bing_like_quadkey_fetch_through_the_cli(cli, tile_server: TileServer, tiles_yaml: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOUNDMAP_TEST_KEY", "abc")
    code, _, err = cli("tiles", "fetch", "--bbox", BBOX, "--source", "test-quadkey", "--zoom", "5",
                       "--tiles-config", str(tiles_yaml), "--workspace", str(tmp_path / "ws"), "--quiet")
    assert code == 0, err
    ws = Workspace.load(tmp_path / "ws")
    assert tile_server.tiles_requested == _expected_tiles(ws)
    assert all(p.startswith("/q/") and p.endswith(".png?key=abc") for p in tile_server.requests)


def _walk(group, prefix: str = ""):
    """Every (name, command) below a Typer/click group (typer vendors click: duck-typed)."""
    for name, command in group.commands.items():
        yield f"{prefix}{name}", command
        if hasattr(command, "commands"):
            yield from _walk(command, f"{prefix}{name} ")


def test_every_command_has_a_one_line_description(cli) -> None:
    code, out, _ = cli("--help")
    assert code == 0
    root = typer.main.get_command(app)
    assert hasattr(root, "commands")
    commands = dict(_walk(root))
    assert {"tiles", "tiles fetch", "tiles info", "tiles sources"} <= set(commands)
    for name in root.commands:  # each listed in `soundmap --help` with its description beside it
        assert any(line.split()[1:2] == [name] and len(line.split()) > 3 for line in out.splitlines()
                   if len(line.split()) > 1), f"`soundmap --help` does not describe {name}"
    for name, command in commands.items():
        summary = (command.help or "").strip().splitlines()[0] if command.help else ""
        assert summary, f"`soundmap {name}` needs a one-line description"
        params = {p.name for p in command.params}
        if name.startswith("tiles ") and not hasattr(command, "commands"):
            assert {"workspace", "cache_dir", "quiet"} <= params, f"`soundmap {name}` lacks a common option"
    code, out, _ = cli("tiles", "--help")
    assert "fetch" in out and "Download the imagery a region needs" in out


def test_workspace_json_is_plain_json(cli, tile_server: TileServer, tiles_yaml: Path, tmp_path: Path) -> None:
    cli("tiles", "fetch", "--bbox", BBOX, "--source", "test-xyz", "--tiles-config", str(tiles_yaml),
        "--workspace", str(tmp_path / "ws"), "--quiet")
    data = json.loads((tmp_path / "ws" / "workspace.json").read_text())
    assert data["format"] == "soundmap-workspace" and data["grids"]["1"]["rows"] == 4
    assert data["attribution"] == "Test tiles (c) nobody" and data["source"]["kind"] == "xyz"


def test_ctrl_c_mid_fetch_exits_130_and_the_rerun_fetches_only_the_rest(
        cli, tile_server: TileServer, tiles_yaml: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_check = fetch_module.image_problem
    checked: list[int] = []

    def ctrl_c_on_the_twentieth_tile(data: bytes, *size: int) -> str | None:
        checked.append(1)
        if len(checked) == 20:
            raise KeyboardInterrupt
        return real_check(data, *size)

    monkeypatch.setattr(fetch_module, "image_problem", ctrl_c_on_the_twentieth_tile)
    ws_dir = tmp_path / "ws"
    args = ("tiles", "fetch", "--bbox", BBOX, "--source", "test-xyz", "--tiles-config", str(tiles_yaml),
            "--workspace", str(ws_dir), "--workers", "2", "--quiet")
    code, _, err = cli(*args)
    assert code == 130 and "resumes" in err and "interrupted" in err
    ws = Workspace.load(ws_dir)  # recorded before the download started
    cache, key = ws.tile_cache(), ws.source().cache_key
    wanted = _expected_tiles(ws)
    kept = wanted - set(cache.missing(key, wanted))
    assert 0 < len(kept) < len(wanted)
    assert all(real_check(cache.get(key, *t)) is None for t in kept)  # every row a whole image
    monkeypatch.setattr(fetch_module, "image_problem", real_check)
    time.sleep(0.1)  # the aborted run's last in-flight requests land before we count anew
    tile_server.reset_counts()
    code, _, err = cli("tiles", "fetch", "--workspace", str(ws_dir), "--quiet")
    assert code == 0, err
    assert tile_server.tiles_requested == wanted - kept and max(tile_server.tile_counts.values()) == 1


def test_fetch_with_an_aoi_requests_only_the_tiles_of_cells_inside_it(
        cli, tile_server: TileServer, tiles_yaml: Path, tmp_path: Path) -> None:
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(json.dumps({"type": "Polygon", "coordinates": [[
        [13.36, 52.46], [13.44, 52.46], [13.36, 52.51], [13.36, 52.46]]]}))
    code, _, err = cli("tiles", "fetch", "--aoi", str(aoi), "--source", "test-xyz", "--stride", "500",
                       "--tiles-config", str(tiles_yaml), "--workspace", str(tmp_path / "ws"), "--quiet")
    assert code == 0, err
    ws = Workspace.load(tmp_path / "ws")
    mask = ws.aoi_mask(1)
    z, inside = tiles_for_grid(ws.grid(1), ws.source(), mask=mask)
    _, everything = tiles_for_grid(ws.grid(1), ws.source())
    assert tile_server.tiles_requested == {(z, x, y) for x, y in inside} and len(inside) < len(everything)
    assert ws.region.aoi_path == str(aoi.resolve()) and ws.region.aoi_geometry["type"] == "Polygon"
