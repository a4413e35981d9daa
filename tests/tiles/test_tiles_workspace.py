"""The workspace: round trip, atomic JSON, AOI masks, planning, and re-use of recorded settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from soundmap.errors import CacheError, InputError
from soundmap.geo.aoi import aoi_mask, read_aoi
from soundmap.geo.bbox import parse_bbox
from soundmap.geo.grid import make_grid
from soundmap.geo.tileplan import tiles_for_grid
from soundmap.paths import tile_cache_path
from soundmap.tiles.cache import TileCache
from soundmap.tiles.sources import resolve_source
from soundmap.pipeline.workspace import (Workspace, cells_lacking_imagery, fetch_workspace, plan_zoom,
                                workspace_for_fetch)
from tests.fixtures.tileserver import TileServer

BBOX = "13.35,52.45,13.45,52.52"


def _triangle_aoi(path: Path) -> Path:
    feature = {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [[
        [13.36, 52.46], [13.44, 52.46], [13.36, 52.51], [13.36, 52.46]]]}}
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return path


def test_round_trip_keeps_region_source_and_exact_grids(tmp_path: Path, tiles_yaml: Path) -> None:
    source = resolve_source("test-zyx", config_path=tiles_yaml)
    ws = Workspace.create(tmp_path / "ws", source=source, zooms=[1, 3], bbox=BBOX, stride=1000.0,
                          tiles_config=tiles_yaml)
    ws.save()
    assert [p.name for p in (tmp_path / "ws").iterdir()] == ["workspace.json"]  # no temp files left
    back = Workspace.load(tmp_path / "ws")
    assert back.source() == source and back.family == "sentinel" and back.zooms == [1, 3]
    assert back.region.bbox == (13.35, 52.45, 13.45, 52.52) and back.stride == 1000.0
    for zoom in (1, 3):
        assert back.grid(zoom) == make_grid(parse_bbox(BBOX), "sentinel", zoom, stride=1000.0)
    assert back.attribution == "Test tiles (c) nobody" and back.licence == "CC0 test data"
    assert back.aoi_mask(1) is None and back.tiles_config == str(tiles_yaml.resolve())
    assert back.tile_cache().path == tile_cache_path()
    assert back.tile_cache(tmp_path / "c").path == tmp_path / "c" / "tiles.sqlite"
    rows, cols = back.cells(1)
    assert rows.size == back.grid(1).rows * back.grid(1).cols


def test_workspace_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               tiles_yaml: Path) -> None:
    monkeypatch.setenv("SOUNDMAP_WORKSPACE", str(tmp_path / "env-ws"))
    ws = Workspace.create(source=resolve_source("test-xyz", config_path=tiles_yaml), zooms=[5], bbox=BBOX)
    ws.save()
    assert Workspace.load().path == tmp_path / "env-ws"


def test_aoi_workspace_masks_cells_and_plans_only_their_tiles(tmp_path: Path, tiles_yaml: Path) -> None:
    aoi = _triangle_aoi(tmp_path / "aoi.geojson")
    source = resolve_source("test-xyz", config_path=tiles_yaml)
    ws = Workspace.create(tmp_path / "ws", source=source, zooms=[1], aoi=aoi, stride=500.0)
    ws.save()
    back = Workspace.load(tmp_path / "ws")
    _, geometry = read_aoi(aoi)
    expected = aoi_mask(back.grid(1), geometry)
    assert 0 < expected.sum() < expected.size  # the triangle keeps some cells, not all
    assert np.array_equal(back.aoi_mask(1), expected)
    plan = plan_zoom(back, 1)
    z, xy = tiles_for_grid(back.grid(1), source, mask=expected)
    _, all_xy = tiles_for_grid(back.grid(1), source)
    assert plan.tiles == sorted((z, x, y) for x, y in xy) and len(xy) < len(all_xy)


def test_missing_damaged_or_newer_workspaces_are_cache_errors(tmp_path: Path, tiles_yaml: Path) -> None:
    with pytest.raises(CacheError, match="no workspace at .*soundmap tiles fetch"):
        Workspace.load(tmp_path / "none")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "workspace.json").write_text("{not json")
    with pytest.raises(CacheError, match="unreadable"):
        Workspace.load(tmp_path / "bad")
    ws = Workspace.create(tmp_path / "new", source=resolve_source("test-xyz", config_path=tiles_yaml),
                          zooms=[1], bbox=BBOX)
    data = ws.to_dict()
    data["version"] = 99
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "workspace.json").write_text(json.dumps(data))
    with pytest.raises(CacheError, match="newer soundmap"):
        Workspace.load(tmp_path / "new")
    with pytest.raises(CacheError, match="has zoom levels 1, not 5"):
        ws.grid(5)


def test_fetch_request_reuses_what_the_workspace_recorded(tmp_path: Path, tiles_yaml: Path) -> None:
    with pytest.raises(InputError, match="give --bbox"):
        workspace_for_fetch(tmp_path / "ws")
    first = workspace_for_fetch(tmp_path / "ws", bbox=BBOX, source="test-zyx", zooms=[1, 5], stride=900.0,
                                tiles_config=tiles_yaml)
    first.save()
    again = workspace_for_fetch(tmp_path / "ws")
    assert again.source() == first.source() and again.zooms == [1, 5] and again.grids == first.grids
    with pytest.raises(InputError, match="holds another region, grid or imagery.*--replace-region"):
        workspace_for_fetch(tmp_path / "ws", source="test-xyz", family="bing", zooms=[3])
    other = workspace_for_fetch(tmp_path / "ws", source="test-xyz", family="bing", zooms=[3], replace_region=True)
    assert other.source().name == "test-xyz" and other.family == "bing" and other.zooms == [3]
    assert other.region.bbox == first.region.bbox and other.stride == 900.0
    with pytest.raises(InputError, match="not both"):
        workspace_for_fetch(tmp_path / "ws", bbox=BBOX, aoi=tmp_path / "x.geojson")


def test_cells_lacking_imagery_are_exactly_those_needing_a_missing_tile(
        tmp_path: Path, tile_server: TileServer, tiles_yaml: Path) -> None:
    source = resolve_source("test-xyz", config_path=tiles_yaml)
    ws = Workspace.create(tmp_path / "ws", source=source, zooms=[1], bbox=BBOX, stride=1500.0)
    cache = TileCache(tmp_path / "tiles.sqlite")
    plan = plan_zoom(ws, 1)
    lost = plan.tiles[len(plan.tiles) // 2]
    tile_server.not_found.add(lost)
    result = fetch_workspace(ws, cache, [plan], workers=4)
    assert result.failed_tiles == {lost: "HTTP 404 (no tile there)"}
    grid = ws.grid(1)
    expected = np.zeros(grid.shape, dtype=bool)
    for r in range(grid.rows):
        for c in range(grid.cols):
            z, xy = tiles_for_grid(grid, source, [r], [c])
            expected[r, c] = (lost[1], lost[2]) in xy and z == lost[0]
    assert expected.any() and np.array_equal(result.lacking[1], expected)
    assert result.cells_lacking == int(expected.sum())
    tile_server.not_found.clear()
    assert fetch_workspace(ws, cache, [plan]).cells_lacking == 0
    assert not cells_lacking_imagery(ws, 1, cache).any()
