"""Embedding stores damaged on purpose: checksums catch flipped bytes and truncation, a deleted
chunk under embedded cells is damage (not nodata), and ``repair_store`` re-pends only those blocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from soundmap.geo.grid import Grid
from soundmap.store.embeddings import (CellState, EmbeddingStore, StoreDamagedError, StoreIdentity,
                                       embedding_store_path, find_damaged_blocks, repair_store)

D = 6


def _filled_store(tmp_path: Path) -> EmbeddingStore:
    grid = Grid(crs="EPSG:3857", x0=1000.0, y0=5000.0, stride=2560.0, footprint=2560.0,
                rows=40, cols=70, zoom=1, family="sentinel")
    identity = StoreIdentity(model_name="tiny", weights_sha256="a" * 64, preprocess_version="1",
                             model_family="sentinel", source_name="loopback", source_key="xyz:abc",
                             zoom=1, grid=grid.to_dict())
    store = EmbeddingStore.create(embedding_store_path(tmp_path, 1), identity, rows=40, cols=70, feature_dim=D)
    rng = np.random.default_rng(0)
    for rows, cols in store.blocks():
        shape = (rows.stop - rows.start, cols.stop - cols.start)
        store.write_block(rows, cols, rng.normal(size=(*shape, D)), np.full(shape, CellState.EMBEDDED))
    return EmbeddingStore.open(store.path)


def _chunk(store: EmbeddingStore, name: str, i: int = 0, j: int = 1) -> Path:
    cells = store.chunk_cells
    return Path(store.chunk_file(name, slice(i * cells, (i + 1) * cells), slice(j * cells, (j + 1) * cells)))


def test_new_stores_checksum_every_chunk(tmp_path: Path) -> None:
    store = _filled_store(tmp_path)
    assert store.has_checksums and store.attrs["chunk_checksum"] == "crc32c"


def test_a_flipped_byte_is_a_one_line_error_naming_the_chunk_and_repair(tmp_path: Path) -> None:
    store = _filled_store(tmp_path)
    chunk = _chunk(store, "features")
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    with pytest.raises(StoreDamagedError) as err:
        list(store.iter_blocks())
    message = str(err.value)
    assert str(chunk) in message and "soundmap embed --repair" in message and "\n" not in message


def test_a_truncated_state_chunk_is_named_too(tmp_path: Path) -> None:
    store = _filled_store(tmp_path)
    chunk = _chunk(store, "state")
    chunk.write_bytes(chunk.read_bytes()[:3])
    with pytest.raises(StoreDamagedError, match="state/c/0/1"):
        store.valid_mask()
    with pytest.raises(StoreDamagedError, match="--repair"):
        store.counts()


def test_a_deleted_feature_chunk_under_embedded_cells_is_damage_not_nodata(tmp_path: Path) -> None:
    store = _filled_store(tmp_path)
    _chunk(store, "features", 1, 2).unlink()
    with pytest.raises(StoreDamagedError, match="missing or non-finite"):
        store.read_block(slice(32, 40), slice(64, 70))


def test_repair_re_pends_only_the_damaged_blocks(tmp_path: Path) -> None:
    store = _filled_store(tmp_path)
    _chunk(store, "features", 0, 0).unlink()
    state_chunk = _chunk(store, "state", 1, 1)
    state_chunk.write_bytes(b"garbage")
    writable = EmbeddingStore.open(store.path, writable=True)
    damaged = find_damaged_blocks(writable)
    assert sorted((b.rows.start, b.cols.start) for b in damaged) == [(0, 0), (32, 32)]
    assert len(repair_store(writable, damaged)) == 2
    assert find_damaged_blocks(writable) == []
    states = writable.state_array()
    assert (states[0:32, 0:32] == CellState.PENDING).all() and (states[32:40, 32:64] == CellState.PENDING).all()
    assert int((states == CellState.EMBEDDED).sum()) == 40 * 70 - 32 * 32 - 8 * 32


def test_embed_names_the_damage_and_embed_repair_re_embeds_it(tile_server, tmp_path: Path, tiny_model,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from soundmap.cli.main import run
    from soundmap.store import open_embedding_store
    from tests.fixtures.embed_workspace import EMBED_ZOOM, fetch_test_workspace

    workspace = fetch_test_workspace(tile_server, tmp_path)
    embed = ["embed", "--workspace", str(workspace), "--batch-size", "4", "--workers", "1", "--quiet"]
    assert run(embed) == 0
    store = open_embedding_store(workspace, EMBED_ZOOM)
    before = np.asarray(store.features[:])
    chunk = Path(store.chunk_file("features", slice(0, 32), slice(0, 32)))
    chunk.write_bytes(chunk.read_bytes()[:-7])     # truncated
    with pytest.raises(StoreDamagedError) as err:   # what a query reading the store meets
        list(open_embedding_store(workspace, EMBED_ZOOM).iter_blocks())
    assert str(chunk) in str(err.value) and "soundmap embed --repair" in str(err.value)
    assert run(embed + ["--repair"]) == 0
    repaired = open_embedding_store(workspace, EMBED_ZOOM)
    assert repaired.valid_mask().all()
    np.testing.assert_array_equal(np.asarray(repaired.features[:]), before)
