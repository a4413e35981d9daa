"""The Zarr embedding store on its own: layout, attributes, blocks, identity checks, crash ordering."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from soundmap.errors import CacheError
from soundmap.geo.grid import Grid
from soundmap.store.embeddings import (CellState, EmbeddingStore, StoreIdentity, chunk_slices,
                                       embedding_store_path, open_embedding_store)

D = 6


def _grid(rows: int = 40, cols: int = 70) -> Grid:
    return Grid(crs="EPSG:3857", x0=1000.0, y0=5000.0, stride=2560.0, footprint=2560.0,
                rows=rows, cols=cols, zoom=1, family="sentinel")


def _identity(grid: Grid, sha: str = "a" * 64, preprocess: str = "1") -> StoreIdentity:
    return StoreIdentity(model_name="tiny", weights_sha256=sha, preprocess_version=preprocess,
                         model_family="sentinel", source_name="loopback", source_key="xyz:abc",
                         zoom=grid.zoom, grid=grid.to_dict())


def _store(tmp_path: Path, grid: Grid, dtype: str = "float16") -> EmbeddingStore:
    return EmbeddingStore.create(embedding_store_path(tmp_path, grid.zoom), _identity(grid),
                                 rows=grid.rows, cols=grid.cols, feature_dim=D, dtype=dtype)


def test_chunk_slices_cover_the_grid_once_and_align_to_chunks() -> None:
    seen = np.zeros((40, 70), dtype=int)
    for rows, cols in chunk_slices(40, 70, 32):
        assert rows.start % 32 == 0 and cols.start % 32 == 0
        assert rows.stop - rows.start <= 32 and cols.stop - cols.start <= 32
        seen[rows, cols] += 1
    assert (seen == 1).all()
    assert len(list(chunk_slices(40, 70, 32))) == 2 * 3


def test_new_store_has_layout_and_attributes(tmp_path: Path) -> None:
    grid = _grid()
    store = _store(tmp_path, grid)
    assert store.path == tmp_path / "embeddings" / "zoom1.zarr"
    assert store.features.shape == (40, 70, D) and store.features.chunks == (32, 32, D)
    assert str(store.features.dtype) == "float16"
    assert store.state.shape == (40, 70) and store.state.chunks == (32, 32)
    assert store.grid == grid
    attrs = json.loads((store.path / "zarr.json").read_text())["attributes"]
    assert attrs["crs"] == "EPSG:3857"
    assert attrs["transform"] == [2560.0, 0.0, 1000.0, 0.0, -2560.0, 5000.0]
    assert attrs["zoom"] == 1
    assert attrs["model"] == {"name": "tiny", "weights_sha256": "a" * 64, "family": "sentinel"}
    assert attrs["preprocess_version"] == "1"
    assert attrs["source"] == {"name": "loopback", "cache_key": "xyz:abc"}
    assert attrs["state_codes"] == {"pending": 0, "embedded": 1, "no_imagery": 2, "outside": 3}
    assert not store.valid_mask().any()
    assert store.counts()["pending"] == 40 * 70
    # the store was built aside and renamed into place: no temporary directory is left behind
    assert [p.name for p in store.path.parent.iterdir()] == ["zoom1.zarr"]


def test_blocks_round_trip_and_invalid_cells_read_as_fill(tmp_path: Path) -> None:
    grid = _grid()
    store = _store(tmp_path, grid, dtype="float32")
    rng = np.random.default_rng(0)
    rows, cols = slice(32, 40), slice(64, 70)  # the ragged corner block
    features = rng.normal(size=(8, 6, D)).astype(np.float32)
    state = np.full((8, 6), CellState.EMBEDDED, dtype=np.uint8)
    state[0, 0] = CellState.NO_IMAGERY
    store.write_block(rows, cols, features, state)

    reopened = open_embedding_store(tmp_path, 1)
    mask = reopened.valid_mask()
    assert mask.sum() == 8 * 6 - 1 and mask[33, 65] and not mask[32, 64]
    blocks = list(reopened.iter_blocks())
    assert [(b[0], b[1]) for b in blocks] == list(chunk_slices(40, 70, 32))
    corner = blocks[-1]
    assert corner[2].dtype == np.float32 and corner[2].shape == (8, 6, D)
    np.testing.assert_array_equal(corner[2][corner[3]], features[state == CellState.EMBEDDED])
    assert np.isnan(corner[2][0, 0]).all()            # NO_IMAGERY cell reads as NaN, not garbage
    assert np.isnan(blocks[0][2]).all() and not blocks[0][3].any()  # never-written block
    assert reopened.counts() == {"pending": 40 * 70 - 48, "embedded": 47, "no_imagery": 1, "outside": 0}


def test_float16_storage_rounds_to_half_precision(tmp_path: Path) -> None:
    store = _store(tmp_path, _grid())
    values = np.full((32, 32, D), 1.0 / 3.0, dtype=np.float32)
    store.write_block(slice(0, 32), slice(0, 32), values, np.ones((32, 32), dtype=np.uint8))
    block = next(store.iter_blocks())[2]
    assert block.dtype == np.float32
    np.testing.assert_allclose(block, np.float16(1.0 / 3.0), rtol=0, atol=0)
    assert abs(float(block[0, 0, 0]) - 1 / 3) < 1e-3


def test_interruption_between_features_and_state_never_reads_as_valid(tmp_path: Path) -> None:
    """Features are written first and states second: a crash in between leaves the cells PENDING."""
    store = _store(tmp_path, _grid())

    class DyingState:
        def __setitem__(self, key: object, value: object) -> None:
            raise KeyboardInterrupt

    real_state = store.state
    store.state = DyingState()  # type: ignore[assignment]
    with pytest.raises(KeyboardInterrupt):
        store.write_block(slice(0, 32), slice(0, 32), np.ones((32, 32, D), np.float32),
                          np.ones((32, 32), dtype=np.uint8))
    store.state = real_state
    reopened = open_embedding_store(tmp_path, 1)
    assert not reopened.valid_mask().any()
    _, _, block, valid = next(reopened.iter_blocks())
    assert not valid.any() and np.isnan(block).all()


def test_resume_requires_the_same_identity(tmp_path: Path) -> None:
    grid = _grid()
    path = embedding_store_path(tmp_path, 1)
    _store(tmp_path, grid)
    same = EmbeddingStore.create_or_resume(path, _identity(grid), rows=40, cols=70, feature_dim=D)
    assert same.identity == _identity(grid)
    other_source = StoreIdentity(**{**_identity(grid).__dict__, "source_name": "eox", "source_key": "xyz:eox"})
    for other, words in [(_identity(grid, sha="b" * 64), "model tiny"),
                         (_identity(grid, preprocess="2"), "preprocessing version"),
                         (other_source, "imagery source loopback, not eox"),
                         (_identity(_grid(rows=41)), "grid")]:
        with pytest.raises(CacheError) as err:
            EmbeddingStore.create_or_resume(path, other, rows=other.grid["rows"], cols=70, feature_dim=D)
        message = str(err.value)
        assert "\n" not in message and words in message and "--overwrite" in message
    fresh = EmbeddingStore.create_or_resume(path, _identity(grid, sha="b" * 64), rows=40, cols=70,
                                            feature_dim=D, overwrite=True)
    assert fresh.identity.weights_sha256 == "b" * 64 and not fresh.valid_mask().any()


def test_open_embedding_store_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="soundmap embed --zoom 3"):
        open_embedding_store(tmp_path, 3)
    store = _store(tmp_path, _grid())

    class OtherModel:
        name, weights_sha256, preprocess_version = "other", "c" * 64, "1"

    with pytest.raises(CacheError, match="were made with model tiny") as err:
        open_embedding_store(tmp_path, 1, model=OtherModel())
    assert "\n" not in str(err.value)

    class SameModel:
        name, weights_sha256, preprocess_version = "tiny", "a" * 64, "1"

    assert open_embedding_store(tmp_path, 1, model=SameModel()).path == store.path
    (store.path / "zarr.json").write_text("{ not json")
    with pytest.raises(CacheError, match="--overwrite"):
        open_embedding_store(tmp_path, 1)


def test_every_recreation_gets_a_new_store_id(tmp_path: Path) -> None:
    """Derived caches (fused embeddings) key on the store's attributes: an --overwrite that
    re-embeds with the same model must still look like a different store."""
    grid = _grid()
    first = _store(tmp_path, grid).attrs["store_id"]
    second = EmbeddingStore.create_or_resume(embedding_store_path(tmp_path, 1), _identity(grid), rows=40, cols=70,
                                             feature_dim=D, overwrite=True).attrs["store_id"]
    assert first != second and len(first) == 32


def test_a_chunk_write_that_fails_midway_leaves_the_old_chunk_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The crash-safety argument rests on Zarr's LocalStore writing each chunk to a temporary file
    and renaming it into place; this fails if a Zarr version starts writing chunks in place."""
    import os

    store = _store(tmp_path, _grid(), dtype="float32")
    first = np.full((32, 32, D), 1.5, dtype=np.float32)
    store.write_block(slice(0, 32), slice(0, 32), first, np.ones((32, 32), dtype=np.uint8))

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch, pytest.raises(OSError):
        patch.setattr(os, "replace", disk_full)
        store.write_block(slice(0, 32), slice(0, 32), np.full((32, 32, D), 7.0, np.float32),
                          np.ones((32, 32), dtype=np.uint8))
    _, _, block, valid = next(open_embedding_store(tmp_path, 1).iter_blocks())
    assert valid.all()
    np.testing.assert_array_equal(block, first)
