"""The streaming engine on a real multi-chunk store with the tiny PSM model: agreement with the
library API across chunk boundaries, empty chunks, bbox windows, the fused-embedding cache and
resuming after an interruption."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from soundmap.models.scoring import score
from soundmap.preprocess.metadata import Metadata
from soundmap.query.engine import fuse_block, run_query
from soundmap.query.fused_cache import FusedCache, fused_cache_key, store_fingerprint
from soundmap.query.plan import MetadataSetting, QueryOptions, make_plan
from tests.fixtures.synthetic_store import EMPTY_BLOCK, SYNTHETIC_CHUNK


def _expected(model, store, texts: list[str], hour: int) -> np.ndarray:
    """Library-only heatmaps (Q × rows × cols): all valid cells fused at once, then scored."""
    valid = store.valid_mask()
    rows, cols = np.nonzero(valid)
    features = torch.from_numpy(np.asarray(store.features[:], dtype=np.float32)[rows, cols])
    lon, lat = store.grid.centers_lonlat(rows, cols)
    fused = model.fuse(features, Metadata(lat=lat, lon=lon, hour=hour))
    values = score(model.encode_text(texts), fused, method="csd").reshape(len(texts), -1).numpy()
    out = np.full((len(texts), *valid.shape), np.nan, dtype=np.float32)
    out[:, rows, cols] = values
    return out


def _plan(tmp_path: Path, name: str, texts: tuple[str, ...], model, **kwargs):
    return make_plan(QueryOptions(out=tmp_path / "out" / name, texts=texts, hours=("9",), **kwargs), model)


def test_multi_chunk_heatmaps_equal_the_library_and_fuse_each_cell_once(tmp_path: Path, tiny_psm,
                                                                       synthetic_store) -> None:
    texts = ("birds", "rain")
    result = run_query(_plan(tmp_path, "m.tif", texts, tiny_psm), model=tiny_psm, store=synthetic_store,
                       cache_root=None)
    valid = synthetic_store.valid_mask()
    assert result.fused_cells == int(valid.sum())
    assert result.fuse_calls == 8  # 9 chunks, one of them without any imagery
    with rasterio.open(tmp_path / "out" / "m.tif") as ds:
        heatmaps = ds.read()
    np.testing.assert_allclose(heatmaps, _expected(tiny_psm, synthetic_store, list(texts), 9), rtol=1e-5, atol=1e-5)
    assert np.isnan(heatmaps[:, EMPTY_BLOCK[0], EMPTY_BLOCK[1]]).all()


def test_an_empty_chunk_is_not_fused(tiny_psm) -> None:
    features = np.zeros((4, 5, 512), np.float32)
    mu, logvar, calls = fuse_block(tiny_psm, None, MetadataSetting(hour=3), slice(0, 4), slice(0, 5), features,
                                   np.zeros((4, 5), bool))
    assert calls == 0 and mu.shape == (4, 5, 512) and logvar.shape == (4, 5, 512) and not mu.any()


def test_bbox_window_across_chunks_equals_the_same_part_of_the_full_map(tmp_path: Path, tiny_psm,
                                                                       synthetic_store) -> None:
    from soundmap.geo.bbox import BBox

    grid = synthetic_store.grid
    run_query(_plan(tmp_path, "full.tif", ("birds",), tiny_psm), model=tiny_psm, store=synthetic_store)
    lon, lat = grid.centers_lonlat(np.array([12, 30]), np.array([9, 27]))  # inner cells, several chunks
    bbox = BBox(float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max()))
    run_query(_plan(tmp_path, "part.tif", ("birds",), tiny_psm, bbox=bbox), model=tiny_psm, store=synthetic_store)
    with rasterio.open(tmp_path / "out" / "full.tif") as full, rasterio.open(tmp_path / "out" / "part.tif") as part:
        col0, row0 = (~full.transform) @ (part.transform.c, part.transform.f)
        r0, c0 = int(round(row0)), int(round(col0))
        assert 0 < r0 <= 12 and 0 < c0 <= 9 and part.height >= 19 and part.width >= 19
        np.testing.assert_array_equal(part.read(1), full.read(1)[r0:r0 + part.height, c0:c0 + part.width])


def test_cached_blocks_need_no_store_reads_and_interrupted_runs_resume(tmp_path: Path, tiny_psm, synthetic_store,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cache_root = tmp_path / "ws" / "fused"
    plan = _plan(tmp_path, "m.tif", ("birds",), tiny_psm)
    calls: list[int] = []
    original = type(tiny_psm).fuse

    def dying(self, features, metadata=None, **kwargs):
        calls.append(len(features))
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(self, features, metadata, **kwargs)

    monkeypatch.setattr(type(tiny_psm), "fuse", dying)
    with pytest.raises(KeyboardInterrupt):
        run_query(plan, model=tiny_psm, store=synthetic_store, cache_root=cache_root)
    assert not (tmp_path / "out" / "m.tif").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # no partial output, no scratch
    done_before = sum(calls[:3])
    monkeypatch.setattr(type(tiny_psm), "fuse", original)
    resumed = run_query(plan, model=tiny_psm, store=synthetic_store, cache_root=cache_root)
    assert resumed.cached_blocks == 4  # the three chunks fused before the interruption + the empty one
    assert resumed.fused_cells == int(synthetic_store.valid_mask().sum()) - done_before

    def no_reads(*args, **kwargs):
        raise AssertionError("a fully cached query must not read the embedding store")

    monkeypatch.setattr(synthetic_store, "read_block", no_reads)
    again = run_query(_plan(tmp_path, "again.tif", ("rain",), tiny_psm), model=tiny_psm, store=synthetic_store,
                      cache_root=cache_root)
    assert again.fused_cells == 0 and again.cached_blocks == 9
    with rasterio.open(tmp_path / "out" / "again.tif") as ds:
        np.testing.assert_allclose(ds.read(1), _expected(tiny_psm, synthetic_store, ["rain"], 9)[0],
                                   rtol=1e-5, atol=1e-5)


def test_cache_keys_separate_models_settings_and_store_contents(tiny_psm, synthetic_store) -> None:
    digest = store_fingerprint(synthetic_store)
    base = dict(model_hash="a" * 64, zoom=1, grid=synthetic_store.grid.to_dict(), store_digest=digest)
    key = fused_cache_key(setting_key=MetadataSetting(hour=1).key(), **base)
    assert key == fused_cache_key(setting_key=MetadataSetting(hour=1).key(), **base)
    assert key != fused_cache_key(setting_key=MetadataSetting(hour=2).key(), **base)
    assert key != fused_cache_key(setting_key=MetadataSetting(hour=1).key(), **{**base, "model_hash": "b" * 64})
    assert key != fused_cache_key(setting_key=MetadataSetting(hour=1).key(), **{**base, "store_digest": "0"})
    # re-embedding a cell changes the store fingerprint
    from soundmap.store.embeddings import CellState

    features, state = synthetic_store.read_block(slice(0, 16), slice(0, 16))
    state[0, 0] = CellState.NO_IMAGERY if state[0, 0] == CellState.EMBEDDED else CellState.EMBEDDED
    writable = type(synthetic_store).open(synthetic_store.path, writable=True)
    writable.write_block(slice(0, 16), slice(0, 16), features, state)
    assert store_fingerprint(type(synthetic_store).open(synthetic_store.path)) != digest


def test_fused_cache_marks_a_block_only_after_its_data(tmp_path: Path) -> None:
    cache = FusedCache(tmp_path / "c", shape=(20, 20), chunks=(SYNTHETIC_CHUNK, SYNTHETIC_CHUNK), probabilistic=True,
                       description={})
    rows, cols = slice(16, 20), slice(0, 16)
    assert not cache.has(rows, cols)
    mu = np.random.default_rng(0).normal(size=(4, 16, 8)).astype(np.float32)
    valid = np.ones((4, 16), bool)
    valid[0, 0] = False
    cache.write(rows, cols, mu, mu - 3, valid)
    assert cache.has(rows, cols) and not cache.has(slice(0, 16), slice(0, 16))
    got_mu, got_logvar, got_valid = cache.read(rows, cols)
    np.testing.assert_array_equal(got_mu, mu)
    np.testing.assert_array_equal(got_logvar, mu - 3)
    np.testing.assert_array_equal(got_valid, valid)
