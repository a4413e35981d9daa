"""Fixtures of the distributed area: real LocalClusters of worker *processes* on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.embed_workspace import fetch_test_workspace, tiny_model, tiny_model_builds  # noqa: F401
from tests.fixtures.tileserver import TileServer


def start_cluster(workers: int = 2, **kwargs):  # type: ignore[no-untyped-def]
    """A LocalCluster of ``workers`` processes (one thread each) on loopback, and its Client."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0", silence_logs=50,
                           env={"OMP_NUM_THREADS": "1", "SOUNDMAP_QUIET": "1"}, **kwargs)
    return cluster, Client(cluster)


def _warm_up() -> None:
    """Import what every task needs (torch, transformers for the model's CLAP branches, the
    renderer, zarr) in a worker process: ~10 s on a busy 2-core machine, paid once per process."""
    import soundmap.distributed.embed  # noqa: F401
    import soundmap.models.clap  # noqa: F401
    import soundmap.models.soundscape  # noqa: F401
    import soundmap.query.engine  # noqa: F401
    import soundmap.tiles.render  # noqa: F401


@pytest.fixture(scope="session")
def cluster_client() -> Iterator[object]:
    """Two worker processes shared by the area's tests: a cold worker spends ~10 s importing torch
    and friends on these 2-core machines, so the cluster is started once. Tests that change a
    worker (resources, fault plugins) undo it."""
    cluster, client = start_cluster(2)
    # imports overlap with the first test's own set-up (futures kept so they are not cancelled)
    warming = [client.submit(_warm_up, pure=False, workers=[w], key=f"warm-up-{w}")
               for w in client.scheduler_info()["workers"]]
    try:
        yield client
    finally:
        del warming
        client.close()
        cluster.close()


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A private $XDG_CONFIG_HOME so that a developer's own tiles.yaml never changes a test."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg-config")))


@pytest.fixture
def fetched_workspace(tile_server: TileServer, tmp_path: Path) -> Path:
    """A workspace (2 × 4 cells at zoom 1) whose tiles were all fetched from the loopback server."""
    return fetch_test_workspace(tile_server, tmp_path)


SYNTHETIC_SHAPE = (20, 19)
SYNTHETIC_CHUNK = 8


@pytest.fixture
def multi_chunk_store(tmp_path: Path, tiny_psm):  # type: ignore[no-untyped-def]
    """A 20 × 19 store made by ``tiny_psm`` with chunks of 8 (3 × 3 blocks, ragged edges), random
    features, scattered cells without imagery and one whole chunk without imagery."""
    from dataclasses import replace

    import numpy as np

    from soundmap.geo.bbox import BBox
    from soundmap.geo.grid import make_grid
    from soundmap.store.embeddings import CellState, EmbeddingStore, StoreIdentity, embedding_store_path

    rows, cols = SYNTHETIC_SHAPE
    grid = replace(make_grid(BBox(10.0, 50.0, 10.5, 50.3), "sentinel", 1), rows=rows, cols=cols, stride=500.0)
    identity = StoreIdentity(tiny_psm.name, tiny_psm.weights_sha256, tiny_psm.preprocess_version, "sentinel",
                             "synthetic", "synthetic", 1, grid.to_dict())
    store = EmbeddingStore.create(embedding_store_path(tmp_path / "ws", 1), identity, rows=rows, cols=cols,
                                  feature_dim=512, dtype="float32", chunk_cells=SYNTHETIC_CHUNK)
    rng = np.random.default_rng(11)
    valid = rng.random((rows, cols)) > 0.15
    valid[0:8, 8:16] = False
    features = rng.normal(size=(rows, cols, 512)).astype(np.float32)
    for block_rows, block_cols in store.blocks():
        state = np.where(valid[block_rows, block_cols], CellState.EMBEDDED, CellState.NO_IMAGERY).astype(np.uint8)
        store.write_block(block_rows, block_cols, features[block_rows, block_cols], state)
    return EmbeddingStore.open(store.path)
