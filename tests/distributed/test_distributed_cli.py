"""``--scheduler`` / ``$SOUNDMAP_SCHEDULER`` / ``--resources`` through the real CLI: fetch, embed
and query a workspace on the area's 2-process cluster (by its address), with the same results as
the same commands on one machine; and ``local:N`` starting worker processes of its own."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

from soundmap.cli.main import run
from soundmap.distributed.cluster import SchedulerSpec, connect
from soundmap.store import open_embedding_store
from tests.fixtures.embed_workspace import EMBED_BBOX, EMBED_ZOOM as Z, TINY_MODEL
from tests.fixtures.tileserver import TileServer


def _scheduler(client) -> str:  # type: ignore[no-untyped-def]
    return client.scheduler.address


def test_fetch_embed_and_query_on_a_cluster_match_one_machine(tile_server: TileServer, tmp_path: Path, tiny_model,
                                                              clap_files: Path, cluster_client,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOUNDMAP_CLAP_DIR", str(clap_files))
    tiles_yaml = tile_server.write_tiles_yaml(tmp_path / "tiles.yaml")
    cluster_ws = tmp_path / "ws-cluster"
    fetch = ["tiles", "fetch", "--bbox", EMBED_BBOX, "--source", "test-xyz", "--zoom", str(Z), "--tiles-config",
             str(tiles_yaml), "--yes", "--quiet"]
    assert run([*fetch, "--workspace", str(cluster_ws), "--scheduler", _scheduler(cluster_client)]) == 0
    assert len(tile_server.tile_counts) > 0 and max(tile_server.tile_counts.values()) == 1
    single_ws = tmp_path / "ws-single"
    shutil.copytree(cluster_ws, single_ws)

    monkeypatch.setenv("SOUNDMAP_SCHEDULER", _scheduler(cluster_client))  # the environment variable works too
    embed = ["embed", "--model", TINY_MODEL, "--dtype", "float32", "--device", "cpu", "--quiet"]
    assert run([*embed, "--workspace", str(cluster_ws)]) == 0
    query = ["query", "--text", "birds", "--hour", "9", "--quiet"]
    assert run([*query, "--workspace", str(cluster_ws), "--out", str(tmp_path / "cluster.tif")]) == 0
    monkeypatch.delenv("SOUNDMAP_SCHEDULER")
    assert run([*embed, "--workspace", str(single_ws)]) == 0
    assert run([*query, "--workspace", str(single_ws), "--out", str(tmp_path / "single.tif")]) == 0

    cluster_store, single_store = open_embedding_store(cluster_ws, Z), open_embedding_store(single_ws, Z)
    assert cluster_store.valid_mask().all()
    np.testing.assert_array_equal(np.asarray(cluster_store.features[:]), np.asarray(single_store.features[:]))
    with rasterio.open(tmp_path / "cluster.tif") as ours, rasterio.open(tmp_path / "single.tif") as theirs:
        np.testing.assert_array_equal(ours.read(), theirs.read())


def test_bad_scheduler_options_are_one_line_errors(fetched_workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(["embed", "--workspace", str(fetched_workspace), "--scheduler", "local:zero", "--quiet"])
    assert code == 2 and "--scheduler" in capsys.readouterr().err
    code = run(["embed", "--workspace", str(fetched_workspace), "--resources", "GPU", "--quiet"])
    assert code == 2 and "--resources" in capsys.readouterr().err


def test_local_n_starts_that_many_worker_processes() -> None:
    with connect(SchedulerSpec(local_workers=2)) as client:
        pids = client.run(os.getpid)
        threads = client.run(lambda: os.environ.get("OMP_NUM_THREADS"))
    assert len(pids) == 2 and os.getpid() not in pids.values()
    assert set(threads.values()) == {str(max(1, (os.cpu_count() or 1) // 2))}
