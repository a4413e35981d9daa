"""Fixtures of the distributed area: real LocalClusters of worker *processes* on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.embed_workspace import fetched_workspace, tiny_model, tiny_model_builds  # noqa: F401


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


SYNTHETIC_SHAPE = (20, 19)
SYNTHETIC_CHUNK = 8


@pytest.fixture
def multi_chunk_store(tmp_path: Path, tiny_psm):  # type: ignore[no-untyped-def]
    """A 20 × 19 store made by ``tiny_psm`` with chunks of 8 (3 × 3 blocks, ragged edges), random
    features, scattered cells without imagery and one whole chunk without imagery."""
    from tests.fixtures.synthetic_store import write_synthetic_store

    return write_synthetic_store(tmp_path, tiny_psm, seed=11, shape=SYNTHETIC_SHAPE, chunk=SYNTHETIC_CHUNK,
                                 empty_block=(slice(0, 8), slice(8, 16)))
