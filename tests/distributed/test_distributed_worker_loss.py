"""A worker process killed in the middle of a block write, on a real LocalCluster: the run
completes, every block is written exactly once by a surviving process, no partial chunk is left,
and the store equals the single-process one. (Last in the area's order: the restarted worker is
cold, and no later test should pay for that.)"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from soundmap.distributed.embed import embed_region_distributed
from soundmap.pipeline.embed import embed_region
from soundmap.store import open_embedding_store
from soundmap.pipeline.workspace import Workspace
from tests.fixtures.embed_workspace import EMBED_ZOOM as Z, TINY_MODEL

from .faults import DieMidBlock
from .test_distributed_embed import _assert_same_store


def test_a_worker_killed_mid_block_loses_only_that_block(fetched_workspace: Path, tiny_model, tmp_path: Path,
                                                         cluster_client) -> None:
    twin = fetched_workspace.parent / "ws-twin"
    shutil.copytree(fetched_workspace, twin)
    options = dict(batch_size=2, dtype="float32", chunk_cells=1)
    embed_region(fetched_workspace, Z, tiny_model, progress=False, **options)
    marker, journal = tmp_path / "killed", tmp_path / "journal.txt"
    target = (1, 2)
    plugin = DieMidBlock(target, str(marker), str(journal))
    cluster_client.register_plugin(plugin)
    try:
        report = embed_region_distributed(twin, Z, TINY_MODEL, client=cluster_client, progress=False, **options)
    finally:
        cluster_client.unregister_worker_plugin(plugin.name)
        cluster_client.wait_for_workers(2, timeout=60)  # the nanny restarts the killed worker
    assert marker.exists(), "the fault was injected: a worker died after writing the features of one block"
    writes = Counter(tuple(map(int, line.split()[:2])) for line in journal.read_text().splitlines())
    grid = Workspace.load(twin).grid(Z)
    assert writes == Counter({(r, c): 1 for r in range(grid.rows) for c in range(grid.cols)})
    killed_pid = int(marker.read_text())
    target_writers = [int(pid) for r, c, pid in (line.split() for line in journal.read_text().splitlines())
                      if (int(r), int(c)) == target]
    assert target_writers and killed_pid not in target_writers, "the lost block was redone by another process"
    assert report.embedded == grid.rows * grid.cols and report.missing == 0
    store = open_embedding_store(twin, Z)
    assert store.valid_mask().all() and np.isfinite(np.asarray(store.features[:])).all()
    _assert_same_store(fetched_workspace, twin)
