"""One embed loop, two executors: the cluster runs the single machine's block function, with the
single machine's batch size and precision, so the stores are equal bit for bit at the production
batch sizes (8 on CPU, 128 on CUDA; run here on CPU workers). And ``query --scheduler`` reads a
store at ``--store-url``."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from soundmap.cli.main import run
from soundmap.distributed.embed import embed_region_distributed
from soundmap.pipeline.blocks import DEFAULT_BATCH_SIZE
from soundmap.pipeline.embed import embed_region
from soundmap.pipeline.workspace import Workspace
from soundmap.store import embedding_store_path
from tests.fixtures.embed_workspace import EMBED_ZOOM as Z, TINY_MODEL, fetch_test_workspace
from tests.fixtures.tileserver import TileServer

from .test_distributed_embed import _assert_same_store

#: ~5 × 10 cells: more than one CPU batch, fewer than one CUDA batch.
WIDER_BBOX = "10.0,50.0,10.3,50.1"


@pytest.mark.parametrize("batch_size", [None, DEFAULT_BATCH_SIZE["cuda"]], ids=["cpu-default", "cuda-128"])
def test_cluster_embed_equals_one_machine_bit_for_bit_at_production_batch_sizes(
        tile_server: TileServer, tmp_path: Path, tiny_model, cluster_client, batch_size: int | None) -> None:
    single = fetch_test_workspace(tile_server, tmp_path, bbox=WIDER_BBOX)
    twin = tmp_path / "ws-cluster"
    shutil.copytree(single, twin)
    grid = Workspace.load(single).grid(Z)
    assert grid.rows * grid.cols > DEFAULT_BATCH_SIZE["cpu"]
    options = {} if batch_size is None else {"batch_size": batch_size}
    reference = embed_region(single, Z, tiny_model, progress=False, **options)  # production dtype and chunks
    report = embed_region_distributed(twin, Z, TINY_MODEL, client=cluster_client, progress=False, **options)
    assert report.embedded == reference.embedded == grid.rows * grid.cols
    # the same forward passes: ceil(cells of each block / batch) on both sides
    assert report.batches == reference.batches
    _assert_same_store(single, twin)


def test_query_on_a_cluster_reads_a_store_at_a_url(fetched_workspace: Path, tiny_model, tmp_path: Path,
                                                   clap_files: Path, cluster_client,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``query --scheduler --store-url`` (refused before): the workers read the store at the URL
    (``local://``, a URL every worker process can reach), and the raster equals the one-machine query's."""
    import fsspec.config
    import rasterio

    monkeypatch.setenv("SOUNDMAP_CLAP_DIR", str(clap_files))
    # an object store needs no directories; the local filesystem behind local:// does (writer only)
    monkeypatch.setitem(fsspec.config.conf, "local", {"auto_mkdir": True})
    url = f"local://{tmp_path / 'bucket'}"
    embed_region(fetched_workspace, Z, tiny_model, progress=False, store_url=url)  # not recorded in the workspace
    assert not embedding_store_path(fetched_workspace, Z).exists()  # only --store-url finds it
    query = ["query", "--workspace", str(fetched_workspace), "--text", "birds", "--no-fused-cache", "--quiet",
             "--store-url", url]
    assert run([*query, "--out", str(tmp_path / "single.tif")]) == 0
    assert run([*query, "--out", str(tmp_path / "cluster.tif"), "--scheduler", cluster_client.scheduler.address]) == 0
    with rasterio.open(tmp_path / "single.tif") as single, rasterio.open(tmp_path / "cluster.tif") as cluster:
        np.testing.assert_array_equal(single.read(), cluster.read())
