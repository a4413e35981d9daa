"""The CLI's user-facing contract across commands: short one-line help, one-line errors with exit
code 2 for every user mistake (usage errors and unusable paths included), impossible zoom levels
named as such, ``SOUNDMAP_QUIET``, and the imagery options where a command takes ``--source``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import typer.main
from affine import Affine

from soundmap.cli.main import app, run
from tests.fixtures.query_workspace import QueryEnv
from tests.fixtures.tileserver import TileServer

#: A region of 2 × 4 zoom-1 cells, small enough to fetch from the loopback server in a moment.
SMALL_BBOX = "10.0,50.0,10.12,50.04"


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run the real entry point in-process; return (exit code, stdout, stderr)."""

    def invoke(*args: object) -> tuple[int, str, str]:
        code = run([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("soundmap: error: "), err
    assert "Traceback" not in err
    return lines[0]


def _commands(command, path: str = "soundmap"):
    for name, sub in getattr(command, "commands", {}).items():
        yield f"{path} {name}", sub
        yield from _commands(sub, f"{path} {name}")


def test_every_command_help_starts_with_one_short_line() -> None:
    commands = list(_commands(typer.main.get_command(app)))
    assert {"soundmap map", "soundmap estimate", "soundmap data split", "soundmap tiles fetch"} <= dict(commands).keys()
    for path, command in commands:
        first = (command.help or "").strip().split("\n\n")[0]
        assert first and "\n" not in first and len(first) <= 100, f"{path}: {first!r}"


@pytest.mark.parametrize("args", [
    ("tiles", "fetch", "--bogus"),
    ("estimate",),                                   # required --bbox missing
    ("embed", "--batch-size", "many"),               # not an integer
    ("query", "--zoom", "one"),
    ("no-such-command",),
])
def test_usage_errors_are_one_line_pointing_at_help(cli, args: tuple[str, ...]) -> None:
    code, _, err = cli(*args)
    assert code == 2
    assert "--help" in _one_error_line(err)


def test_unusable_workspace_and_cache_paths_are_one_line_errors(cli, tile_server: TileServer, tmp_path: Path) -> None:
    tiles_yaml = tile_server.write_tiles_yaml(tmp_path / "tiles.yaml")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a directory")
    fetch = ("tiles", "fetch", "--bbox", SMALL_BBOX, "--source", "test-xyz", "--tiles-config", tiles_yaml, "--quiet")
    code, _, err = cli(*fetch, "--workspace", a_file / "ws")
    assert code == 2 and str(a_file) in _one_error_line(err)
    code, _, err = cli(*fetch, "--workspace", tmp_path / "ws", "--cache-dir", a_file / "cache")
    assert code == 2 and str(a_file) in _one_error_line(err)


def test_query_out_under_a_file_is_a_one_line_error(cli, query_env: QueryEnv, tmp_path: Path) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a directory")
    code, _, err = cli("query", "--workspace", query_env.workspace, "--text", "birds", "--quiet",
                       "--out", a_file / "map.tif")
    assert code == 2 and str(a_file) in _one_error_line(err)


def test_impossible_query_zoom_is_named_instead_of_asking_to_embed_it(cli, query_env: QueryEnv, tmp_path: Path) -> None:
    code, _, err = cli("query", "--workspace", query_env.workspace, "--text", "birds", "--zoom", "2",
                       "--out", tmp_path / "m.tif")
    assert code == 2 and "zoom level 2 is not a PSM zoom level; use 1, 3 or 5" in _one_error_line(err)


def test_impossible_bga_zoom_is_named_instead_of_asking_to_fetch_it(cli, tmp_path: Path) -> None:
    from soundmap.tiles.sources import resolve_source
    from soundmap.pipeline.workspace import Workspace

    bbox = "10.0,50.0,10.05,50.03"
    ws = Workspace.create(tmp_path / "ws", source=resolve_source("http://127.0.0.1:9/{z}/{x}/{y}.png"),
                          zooms=[1], bbox=bbox)
    ws.save()
    landcover = tmp_path / "landcover.tif"
    with rasterio.open(landcover, "w", driver="GTiff", width=60, height=40, count=1, dtype="uint8",
                       crs="EPSG:4326", transform=Affine(0.001, 0, 9.99, 0, -0.001, 50.04), nodata=0) as dst:
        dst.write(np.full((1, 40, 60), 10, dtype=np.uint8))
    code, _, err = cli("bga", "--workspace", ws.path, "--landcover", landcover, "--zoom", "2", "--out", tmp_path / "b.tif")
    assert code == 2 and "zoom level 2 is not a PSM zoom level" in _one_error_line(err)


def test_soundmap_quiet_in_the_environment_silences_commands(cli, tile_server: TileServer, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    tiles_yaml = tile_server.write_tiles_yaml(tmp_path / "tiles.yaml")
    fetch = ("tiles", "fetch", "--bbox", SMALL_BBOX, "--source", "test-xyz", "--tiles-config", tiles_yaml,
             "--workspace", tmp_path / "ws")
    monkeypatch.delenv("SOUNDMAP_QUIET", raising=False)
    code, _, err = cli(*fetch)
    assert code == 0 and "ready" in err                      # informational lines without it
    monkeypatch.setenv("SOUNDMAP_QUIET", "1")
    code, _, err = cli(*fetch)
    assert code == 0 and err == ""


def test_align_checks_source_before_reading_the_manifest(cli, tmp_path: Path) -> None:
    code, _, err = cli("align", tmp_path / "missing.csv", "--source", "no-such-imagery", "--no-bga")
    assert code == 2 and "unknown --source 'no-such-imagery'" in _one_error_line(err)


def test_map_and_align_read_sources_from_tiles_config(cli, tile_server: TileServer, tmp_path: Path) -> None:
    tiles_yaml = tile_server.write_tiles_yaml(tmp_path / "tiles.yaml")
    code, _, err = cli("map", "--bbox", SMALL_BBOX, "--text", "birds", "--source", "test-xyz",
                       "--tiles-config", tiles_yaml, "--model", "no-such-model", "--out", tmp_path / "m.tif")
    assert code == 2 and "model 'no-such-model' is not installed" in _one_error_line(err)
    code, _, err = cli("align", tmp_path / "missing.csv", "--source", "test-xyz", "--tiles-config", tiles_yaml,
                       "--no-bga")
    assert code == 2 and "missing.csv does not exist" in _one_error_line(err)


def test_bga_compare_without_embeddings_fails_before_writing_anything(cli, tmp_path: Path) -> None:
    from soundmap.tiles.sources import resolve_source
    from soundmap.pipeline.workspace import Workspace

    ws = Workspace.create(tmp_path / "ws", source=resolve_source("http://127.0.0.1:9/{z}/{x}/{y}.png"),
                          zooms=[1], bbox="10.0,50.0,10.05,50.03")
    ws.save()
    landcover = tmp_path / "landcover.tif"
    with rasterio.open(landcover, "w", driver="GTiff", width=60, height=40, count=1, dtype="uint8",
                       crs="EPSG:4326", transform=Affine(0.001, 0, 9.99, 0, -0.001, 50.04), nodata=0) as dst:
        dst.write(np.full((1, 40, 60), 10, dtype=np.uint8))
    code, out, err = cli("bga", "traffic", "birds", "wind", "--compare", "--workspace", ws.path,
                         "--landcover", landcover, "--out", tmp_path / "b.tif")
    assert code == 2 and "no embeddings in workspace" in _one_error_line(err)
    assert out == "" and not (tmp_path / "b.tif").exists()
