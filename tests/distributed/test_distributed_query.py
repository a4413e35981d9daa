"""Distributed query on a real LocalCluster of 2 worker processes: the same GeoTIFF values as
the single-machine engine, through the fused-embedding cache too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio

from soundmap.distributed.query import run_query_distributed
from soundmap.query.engine import run_query
from soundmap.query.plan import QueryOptions, make_plan


def _plan(out: Path, model):  # type: ignore[no-untyped-def]
    return make_plan(QueryOptions(out=out, texts=("birds", "rain"), hours=("9", "21"), uncertainty=True,
                                  normalize="percentile"), model)


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def test_cluster_query_writes_the_same_rasters_as_one_machine(tmp_path: Path, tiny_psm,
                                                             multi_chunk_store, cluster_client) -> None:
    single = _plan(tmp_path / "single" / "map.tif", tiny_psm)
    reference = run_query(single, model=tiny_psm, store=multi_chunk_store, cache_root=None)
    spread = _plan(tmp_path / "cluster" / "map.tif", tiny_psm)
    result = run_query_distributed(spread, client=cluster_client, model=tiny_psm, store=multi_chunk_store,
                                   cache_root=tmp_path / "fused", device="cpu")
    assert (result.fused_cells, result.fuse_calls) == (reference.fused_cells, reference.fuse_calls)
    assert result.computed_blocks == 2 * 9  # 2 hours × 9 chunks
    assert [p.name for p in result.paths] == [p.name for p in reference.paths] and len(result.paths) >= 3
    for ours, theirs in zip(result.paths, reference.paths):
        np.testing.assert_array_equal(_read(ours), _read(theirs), err_msg=ours.name)
    assert np.isnan(_read(result.paths[0])[:, 0:8, 8:16]).all()

    # the fused blocks the client wrote into the cache serve a second call: nothing is fused again
    again = run_query_distributed(_plan(tmp_path / "again" / "map.tif", tiny_psm), client=cluster_client,
                                  model=tiny_psm, store=multi_chunk_store, cache_root=tmp_path / "fused")
    assert (again.computed_blocks, again.cached_blocks, again.fused_cells) == (0, 2 * 9, 0)
    np.testing.assert_array_equal(_read(again.paths[0]), _read(reference.paths[0]))
    # the model was built in memory: it was saved beside the workspace for the workers to load
    assert list((multi_chunk_store.path.parent.parent / ".cluster-models").glob("*/config.json"))


def test_a_bbox_window_across_chunks_matches_one_machine(tmp_path: Path, tiny_psm, multi_chunk_store,
                                                         cluster_client) -> None:
    from soundmap.geo.grid import window_for_bbox
    from soundmap.geo.bbox import BBox

    grid = multi_chunk_store.grid
    lon, lat = grid.centers_lonlat(np.array([3, 14]), np.array([2, 12]))
    bbox = BBox(float(min(lon)), float(min(lat)), float(max(lon)), float(max(lat)))
    rows, cols = window_for_bbox(grid, bbox)
    assert rows.start < 8 < rows.stop and cols.start < 8 < cols.stop, "the window must cut through chunks"

    def plan(name: str):  # type: ignore[no-untyped-def]
        return make_plan(QueryOptions(out=tmp_path / name / "map.tif", texts=("wind",), hours=("3",), bbox=bbox),
                         tiny_psm)

    reference = run_query(plan("single"), model=tiny_psm, store=multi_chunk_store, cache_root=None)
    result = run_query_distributed(plan("cluster"), client=cluster_client, model=tiny_psm, store=multi_chunk_store)
    ours, theirs = _read(result.paths[0]), _read(reference.paths[0])
    assert ours.shape[1:] == (rows.stop - rows.start, cols.stop - cols.start)
    np.testing.assert_array_equal(ours, theirs)
    with rasterio.open(result.paths[0]) as a, rasterio.open(reference.paths[0]) as b:
        assert a.transform == b.transform and a.crs == b.crs
