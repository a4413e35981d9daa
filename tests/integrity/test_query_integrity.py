"""A query never paints a silently wrong map: an unfinished store is refused without --partial
(coverage recorded either way), a workspace whose region changed is refused or replaced
explicitly, and a damaged fused-cache entry is recomputed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from soundmap.cli.main import run
from soundmap.store.embeddings import CellState, EmbeddingStore, embedding_store_path
from soundmap.pipeline.workspace import Workspace
from tests.fixtures.query_workspace import QueryEnv


def _run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    code = run([str(a) for a in args])
    return code, capsys.readouterr().err.strip()


def _query(env: QueryEnv, out: Path, *extra: object) -> list[object]:
    return ["query", "--workspace", env.workspace, "--out", out, "--text", "birds", "--quiet", *extra]


def test_query_of_an_unfinished_store_is_refused_without_partial(query_env: QueryEnv, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    store = EmbeddingStore.open(embedding_store_path(query_env.workspace, 1), writable=True)
    rows, cols = next(iter(store.blocks()))
    features, state = store.read_block(rows, cols)
    state[:] = CellState.PENDING                       # what an embed still running leaves
    store.write_block(rows, cols, None, state)
    pending = state.size
    code, err = _run(capsys, *_query(query_env, tmp_path / "m.tif"))
    assert code == 2 and f"{pending} of " in err and "--partial" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m.tif").exists()
    code, err = _run(capsys, *_query(query_env, tmp_path / "m.tif", "--partial"))
    assert code == 0, err
    with rasterio.open(tmp_path / "m.tif") as ds:
        tags = ds.tags()
    assert tags["coverage_pending"] == str(pending) and f"({pending} pending" in tags["coverage"]


def test_a_complete_map_records_its_coverage(query_env: QueryEnv, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(capsys, *_query(query_env, tmp_path / "m.tif"))[0] == 0
    with rasterio.open(tmp_path / "m.tif") as ds:
        tags = ds.tags()
    assert tags["coverage_pending"] == "0" and int(tags["coverage_embedded"]) > 0


def test_fetching_another_region_is_refused_or_replaces_it_explicitly(query_env: QueryEnv, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    ws = Workspace.load(query_env.workspace)
    west, south, east, north = ws.region.bbox
    other = f"{west + 0.05},{south},{east + 0.05},{north}"
    fetch = ["tiles", "fetch", "--workspace", query_env.workspace, "--bbox", other, "--quiet"]
    code, err = _run(capsys, *fetch)
    assert code == 2 and "holds another region" in err and "--replace-region" in err
    assert Workspace.load(query_env.workspace).region.bbox == ws.region.bbox  # nothing changed
    code, err = _run(capsys, *fetch, "--replace-region", "--dry-run")
    assert code == 0 and (query_env.workspace / "embeddings" / "zoom1.zarr").exists()  # a dry run deletes nothing
    _run(capsys, *fetch, "--replace-region")                  # the loopback server is gone: exit code not checked
    assert not (query_env.workspace / "embeddings" / "zoom1.zarr").exists()
    code, err = _run(capsys, *_query(query_env, tmp_path / "m.tif"))
    assert code == 2 and "no embeddings" in err


def test_a_store_of_an_old_region_is_never_mapped(query_env: QueryEnv, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    ws = Workspace.load(query_env.workspace)
    west, south, east, north = ws.region.bbox
    moved = Workspace.create(query_env.workspace, source=ws.source(), zooms=ws.zooms,
                             bbox=f"{west + 0.05},{south},{east + 0.05},{north}", stride=ws.stride,
                             tiles_config=ws.tiles_config)
    moved.save()                                          # what an older soundmap let `tiles fetch` do
    code, err = _run(capsys, *_query(query_env, tmp_path / "m.tif"))
    assert code == 2 and "another region" in err and "embed --overwrite" in err


def test_a_damaged_fused_cache_entry_is_dropped_and_recomputed(query_env: QueryEnv, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(capsys, *_query(query_env, tmp_path / "a.tif"))[0] == 0
    chunks = sorted(p for p in (query_env.workspace / "fused").rglob("mu.zarr/c/*/*/*") if p.is_file())
    assert chunks
    data = bytearray(chunks[0].read_bytes())
    data[100] ^= 0xFF
    chunks[0].write_bytes(bytes(data))
    assert _run(capsys, *_query(query_env, tmp_path / "b.tif"))[0] == 0
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
    assert chunks[0].read_bytes() != bytes(data)          # the damaged chunk was recomputed and rewritten
