"""Distributed tile downloads on a real LocalCluster of 2 worker processes against the loopback
tile server: every tile cached once, the single-machine retry rules, and a request limit that
holds for the whole cluster, not per worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from soundmap.distributed.fetch import GlobalRateLimit, fetch_workspace_distributed
from soundmap.errors import InputError
from soundmap.tiles.fetch import RetryPolicy
from soundmap.tiles.sources import resolve_source
from soundmap.pipeline.workspace import Workspace, plan_zoom
from tests.fixtures.embed_workspace import EMBED_BBOX, EMBED_ZOOM as Z
from tests.fixtures.tileserver import TileServer


def _unfetched_workspace(server: TileServer, root: Path) -> Workspace:
    source = resolve_source("test-xyz", config_path=server.write_tiles_yaml(root / "tiles.yaml"))
    ws = Workspace.create(root / "ws", source=source, zooms=[Z], bbox=EMBED_BBOX)
    ws.save()
    return ws


def test_cluster_fetch_caches_every_tile_once_under_one_cluster_wide_limit(tile_server: TileServer, tmp_path: Path,
                                                                          cluster_client) -> None:
    ws = _unfetched_workspace(tile_server, tmp_path)
    plan = plan_zoom(ws, Z)
    flaky = plan.tiles[3]
    tile_server.server_error[flaky] = 2  # two 500s, then the tile: the same retries as one machine
    tile_server.latency_s = 0.05  # requests overlap, so an unlimited fetch would have many in flight
    cache = ws.tile_cache()
    result = fetch_workspace_distributed(ws, cache, cluster_client, policy=RetryPolicy(retries=3, backoff_s=0.01),
                                         max_concurrent=2, tiles_per_task=8)  # 2 workers × 8 threads each
    report = result.reports[Z]
    assert report.ok and report.downloaded == plan.n_tiles == report.requested
    assert not cache.missing(ws.source().cache_key, plan.tiles)
    assert result.cells_lacking == 0
    assert tile_server.tile_counts[flaky] == 3
    assert all(tile_server.tile_counts[t] == 1 for t in plan.tiles if t != flaky)
    assert 1 <= tile_server.max_in_flight <= 2, "the cap holds across all workers together"

    # a second fetch finds everything cached and sends no task and no request
    before = sum(tile_server.tile_counts.values())
    again = fetch_workspace_distributed(ws, cache, cluster_client, max_concurrent=2)
    assert (again.reports[Z].downloaded, again.reports[Z].cached) == (0, plan.n_tiles)
    assert sum(tile_server.tile_counts.values()) == before


def test_tiles_the_server_refuses_leave_their_cells_lacking(tile_server: TileServer, tmp_path: Path,
                                                            cluster_client) -> None:
    ws = _unfetched_workspace(tile_server, tmp_path)
    plan = plan_zoom(ws, Z)
    tile_server.not_found = {plan.tiles[0]}
    result = fetch_workspace_distributed(ws, ws.tile_cache(), cluster_client, tiles_per_task=8)
    assert list(result.failed_tiles) == [plan.tiles[0]] and "404" in result.failed_tiles[plan.tiles[0]]
    assert result.cells_lacking >= 1


def test_a_rate_cap_is_a_minimum_lease_time() -> None:
    # N leases each held >= N / R seconds allow at most R requests per second: 4 / 2 = 2 s
    assert GlobalRateLimit.create(4, 2.0).min_hold_s == 2.0
    assert GlobalRateLimit.create(4).min_hold_s == 0.0
    with pytest.raises(InputError):
        GlobalRateLimit.create(0)
