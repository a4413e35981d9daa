"""Distributed embedding on a real LocalCluster of 2 worker processes (loopback tile server, tiny
model): the same Zarr contents as the single-process loop, one model load per worker, resources
routing, and a worker killed in the middle of a block write."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from soundmap.distributed.cluster import loaded_models
from soundmap.distributed.embed import embed_region_distributed
from soundmap.pipeline.embed import embed_region
from soundmap.store import CellState, open_embedding_store
from soundmap.pipeline.workspace import Workspace
from tests.fixtures.embed_workspace import EMBED_ZOOM as Z, TINY_MODEL, fetch_test_workspace
from tests.fixtures.tileserver import TileServer

from .faults import set_worker_resources

#: Attributes that differ between any two stores by design (identity of the run, not content).
RUN_ATTRS = {"store_id", "created"}


def _twin_workspaces(server: TileServer, root: Path, stride: str | None = None) -> tuple[Path, Path]:
    """One fetched workspace and an identical copy (the tile cache is shared)."""
    single = fetch_test_workspace(server, root, stride=stride)
    twin = root / "ws-cluster"
    shutil.copytree(single, twin)
    return single, twin


def _assert_same_store(a_path: Path, b_path: Path) -> None:
    a, b = open_embedding_store(a_path, Z), open_embedding_store(b_path, Z)
    np.testing.assert_array_equal(np.asarray(a.state[:]), np.asarray(b.state[:]))
    np.testing.assert_array_equal(np.asarray(a.features[:]), np.asarray(b.features[:]))
    same = {k: v for k, v in a.attrs.items() if k not in RUN_ATTRS}
    assert same == {k: v for k, v in b.attrs.items() if k not in RUN_ATTRS}
    assert a.features.chunks == b.features.chunks


def test_cluster_embed_writes_exactly_the_single_process_store(tile_server: TileServer, tmp_path: Path, tiny_model,
                                                               cluster_client) -> None:
    single, twin = _twin_workspaces(tile_server, tmp_path)
    options = dict(batch_size=3, dtype="float32", chunk_cells=2)  # 2 blocks of 4 cells: batches of 3 + 1
    reference = embed_region(single, Z, tiny_model, progress=False, **options)
    report = embed_region_distributed(twin, Z, TINY_MODEL, client=cluster_client, progress=False, device="cpu",
                                      **options)
    grid = Workspace.load(twin).grid(Z)
    assert (report.embedded, report.missing) == (reference.embedded, 0) == (grid.rows * grid.cols, 0)
    _assert_same_store(single, twin)

    # resume: everything is done, nothing is sent again
    again = embed_region_distributed(twin, Z, TINY_MODEL, client=cluster_client, progress=False, **options)
    assert (again.embedded, again.already_done) == (0, grid.rows * grid.cols)


def test_cluster_embed_resumes_a_partial_store_like_one_machine(fetched_workspace: Path, tiny_model,
                                                                cluster_client) -> None:
    twin = fetched_workspace.parent / "ws-twin"
    shutil.copytree(fetched_workspace, twin)
    options = dict(batch_size=2, dtype="float32", chunk_cells=1)
    embed_region(fetched_workspace, Z, tiny_model, progress=False, **options)
    embed_region(twin, Z, tiny_model, progress=False, **options)
    store = open_embedding_store(twin, Z)
    store = type(store).open(store.path, writable=True)
    store.state[0:1, 1:3] = CellState.PENDING  # two blocks "lost" by an interrupted run
    report = embed_region_distributed(twin, Z, TINY_MODEL, client=cluster_client, progress=False, **options)
    assert (report.embedded, report.already_done) == (2, 6)
    _assert_same_store(fetched_workspace, twin)


def test_encoder_tasks_run_only_on_workers_with_the_resources(fetched_workspace: Path, tiny_model,
                                                              cluster_client) -> None:
    """One worker declares GPU=1, the other nothing: every block is encoded and written on the
    first; the CPU-only worker loads no model during the run (it only renders)."""
    twin = fetched_workspace.parent / "ws-twin"
    shutil.copytree(fetched_workspace, twin)
    workers = sorted(cluster_client.scheduler_info()["workers"])
    gpu_worker, cpu_worker = workers[0], workers[1]
    cluster_client.run(set_worker_resources, GPU=1, workers=[gpu_worker])
    try:
        before = cluster_client.run(loaded_models)
        results = []
        report = embed_region_distributed(twin, Z, TINY_MODEL, client=cluster_client, progress=False, batch_size=2,
                                          dtype="float32", chunk_cells=1, resources={"GPU": 1},
                                          on_block=results.append)
        after = cluster_client.run(loaded_models)
    finally:
        cluster_client.run(set_worker_resources, GPU=0, workers=[gpu_worker])
    assert report.embedded == 8 and len(results) == 8
    assert {r.worker for r in results} == {gpu_worker}
    assert len(after[gpu_worker]) - len(before[gpu_worker]) == 1, "one model load for 8 blocks"
    assert after[cpu_worker] == before[cpu_worker]
    embed_region(fetched_workspace, Z, tiny_model, progress=False, batch_size=2, dtype="float32", chunk_cells=1)
    _assert_same_store(fetched_workspace, twin)


def test_block_tasks_fetch_the_tiles_the_cache_lacks(tile_server: TileServer, tmp_path: Path, tiny_model,
                                                     cluster_client) -> None:
    from soundmap.tiles.sources import resolve_source
    from soundmap.pipeline.workspace import plan_zoom
    from tests.fixtures.embed_workspace import EMBED_BBOX

    source = resolve_source("test-xyz", config_path=tile_server.write_tiles_yaml(tmp_path / "tiles.yaml"))
    ws = Workspace.create(tmp_path / "ws", source=source, zooms=[Z], bbox=EMBED_BBOX)
    ws.save()
    plan = plan_zoom(ws, Z)
    assert ws.tile_cache().missing(source.cache_key, plan.tiles) == plan.tiles, "nothing fetched beforehand"
    report = embed_region_distributed(ws, Z, TINY_MODEL, client=cluster_client, progress=False, batch_size=2,
                                      dtype="float32", chunk_cells=2, max_concurrent_downloads=4)
    assert (report.embedded, report.missing) == (8, 0)
    assert not ws.tile_cache().missing(source.cache_key, plan.tiles)
    assert set(tile_server.tile_counts) == set(plan.tiles)
    assert tile_server.max_in_flight <= 4


def test_the_store_records_the_precision_the_encoding_workers_compute_in(tiny_model, cluster_client) -> None:
    import pytest

    from soundmap.distributed.cluster import ModelRef
    from soundmap.distributed.embed import EmbedJob, _check_precision, encoder_device_type, encoder_precision
    from soundmap.errors import InputError, ModelError

    # CPU-only workers under "auto" compute fp32; an explicit device or fp32 needs no question
    assert encoder_device_type(cluster_client, "auto", None) == "cpu"
    assert encoder_device_type(cluster_client, "cuda:0", None) == "cuda"
    assert encoder_precision("cpu", "auto") == "fp32"
    assert encoder_precision("cuda", "auto") == "bf16"
    assert encoder_precision("cuda", "fp32") == "fp32"
    with pytest.raises(InputError, match="--resources"):
        encoder_device_type(cluster_client, "auto", {"GPU": 1})  # no worker has a GPU
    # a worker that would write features of another precision than the store's refuses
    job = EmbedJob(store_path="unused", zoom=Z, grid=None, source=None, cache=None, model=ModelRef("unused", ""),
                   batch_size=2, image_precision="bf16")
    with pytest.raises(ModelError, match="encodes in fp32"):
        _check_precision(tiny_model, job)
