"""The embed loop end to end through the real code: loopback tile server → ``soundmap tiles fetch``
→ real renderer → tiny model → Zarr store; resume, invalidation and missing imagery."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from soundmap.errors import CacheError
from soundmap.pipeline.embed import embed_region
from soundmap.store import CellState, open_embedding_store
from soundmap.pipeline.embed import prefetched
from soundmap.tiles.sources import resolve_source
from soundmap.pipeline.workspace import Workspace, cells_lacking_imagery, plan_zoom
from tests.fixtures.embed_workspace import EMBED_BBOX, EMBED_ZOOM as Z, fetch_test_workspace
from tests.fixtures.tileserver import TileServer


def _count_images(model, monkeypatch: pytest.MonkeyPatch, fail_on_call: int | None = None) -> list[int]:
    """Record the number of images of every encoder call (optionally dying on one of them).

    Wraps the model's *original* method, so calling it again replaces the previous wrapper."""
    calls: list[int] = []
    original = type(model).encode_image.__get__(model)

    def counting(images, zoom):
        calls.append(len(images))
        if fail_on_call is not None and len(calls) == fail_on_call:
            raise KeyboardInterrupt
        return original(images, zoom)

    monkeypatch.setattr(model, "encode_image", counting)
    return calls


def _rendered(grid, rows, cols, ws):  # type: ignore[no-untyped-def]
    """The cells as the embed loop renders them (its renderer for this source on the CPU)."""
    from soundmap.pipeline.blocks import CellGroup, make_renderer

    group = CellGroup(block=(slice(0, grid.rows), slice(0, grid.cols)), rows=rows, cols=cols, last_in_block=True)
    rendered = make_renderer(grid, ws.source(), ws.tile_cache(), device="cpu")(group)
    return rendered.images, rendered.valid


def test_store_holds_the_encoder_features_of_the_rendered_cells(fetched_workspace: Path, tiny_model) -> None:
    report = embed_region(fetched_workspace, Z, tiny_model, batch_size=3, workers=2, progress=False,
                          dtype="float32", chunk_cells=2)
    ws = Workspace.load(fetched_workspace)
    grid = ws.grid(Z)
    assert (grid.rows, grid.cols) == (2, 4), "the test region must cross a chunk boundary"
    assert (report.embedded, report.missing, report.already_done) == (grid.rows * grid.cols, 0, 0)
    store = open_embedding_store(fetched_workspace, Z, model=tiny_model)
    assert store.grid == grid and store.valid_mask().all()
    assert store.attrs["source"]["name"] == "test-xyz" and store.attrs["zoom"] == Z
    assert store.attrs["model"]["weights_sha256"] == tiny_model.weights_sha256
    assert store.attrs["preprocess_version"] == tiny_model.preprocess_version
    assert store.attrs["crs"] == grid.crs and store.attrs["transform"] == list(grid.transform)[:6]

    rows = np.array([0, 0, 1, 1, 0])
    cols = np.array([0, 1, 2, 3, 3])
    pixels, valid = _rendered(grid, rows, cols, ws)
    assert valid.all()
    expected = tiny_model.encode_image(pixels, Z).detach().float().numpy()
    stored = np.asarray(store.features[:])[rows, cols]
    np.testing.assert_allclose(stored, expected, rtol=1e-5, atol=1e-5)
    blocks = list(store.iter_blocks())
    assert [(b[0], b[1]) for b in blocks] == [(slice(0, 2), slice(0, 2)), (slice(0, 2), slice(2, 4))]
    np.testing.assert_array_equal(np.concatenate([b[2] for b in blocks], axis=1), np.asarray(store.features[:]))


def test_cells_whose_tiles_are_404_are_marked_and_retried_later(tile_server: TileServer, tmp_path: Path,
                                                                tiny_model, monkeypatch: pytest.MonkeyPatch) -> None:
    tiles_yaml = tile_server.write_tiles_yaml(tmp_path / "plan.yaml")
    source = resolve_source("test-xyz", config_path=tiles_yaml)
    plan = plan_zoom(Workspace.create(tmp_path / "plan", source=source, zooms=[Z], bbox=EMBED_BBOX), Z)
    unavailable = {plan.tiles[len(plan.tiles) // 2]}
    workspace = fetch_test_workspace(tile_server, tmp_path, not_found=unavailable)
    ws = Workspace.load(workspace)
    lacking = cells_lacking_imagery(ws, Z, ws.tile_cache())
    assert 0 < lacking.sum() < lacking.size

    report = embed_region(workspace, Z, tiny_model, batch_size=4, workers=2, progress=False)
    store = open_embedding_store(workspace, Z)
    state = store.state_array()
    np.testing.assert_array_equal(state == CellState.NO_IMAGERY, lacking)
    np.testing.assert_array_equal(store.valid_mask(), ~lacking)
    assert report.missing == lacking.sum() and report.embedded == (~lacking).sum() and not report.complete

    fetch_test_workspace(tile_server, tmp_path, not_found=())  # the server recovered: fetch again
    calls = _count_images(tiny_model, monkeypatch)
    again = embed_region(workspace, Z, tiny_model, batch_size=4, workers=2, progress=False)
    assert sum(calls) == lacking.sum() == again.embedded and again.missing == 0
    assert open_embedding_store(workspace, Z).valid_mask().all()


@pytest.mark.parametrize("interrupt", ["after_batch", "inside_encoder"])
def test_an_interrupted_embed_resumes_with_only_the_remaining_cells(
        tile_server: TileServer, tmp_path: Path, tiny_model, monkeypatch: pytest.MonkeyPatch, interrupt: str) -> None:
    workspace = fetch_test_workspace(tile_server, tmp_path / "a")
    total = Workspace.load(workspace).grid(Z).rows * Workspace.load(workspace).grid(Z).cols
    kwargs = dict(batch_size=2, workers=2, progress=False, dtype="float32", chunk_cells=2)
    if interrupt == "after_batch":
        def stop(report) -> None:
            if report.batches == 3:
                raise KeyboardInterrupt
        with pytest.raises(KeyboardInterrupt):
            embed_region(workspace, Z, tiny_model, on_batch=stop, **kwargs)
        kept = 3 * 2
    else:
        # calls 1-2 are batches; call 3 dies
        _count_images(tiny_model, monkeypatch, fail_on_call=3)
        with pytest.raises(KeyboardInterrupt):
            embed_region(workspace, Z, tiny_model, **kwargs)
        kept = 2 * 2  # the batch in flight is lost, nothing else
    assert open_embedding_store(workspace, Z).valid_mask().sum() == kept

    calls = _count_images(tiny_model, monkeypatch)
    report = embed_region(workspace, Z, tiny_model, **kwargs)
    assert sum(calls) == total - kept
    assert (report.embedded, report.already_done) == (total - kept, kept)

    # what an uninterrupted run stores: the encoder features of every rendered cell
    ws = Workspace.load(workspace)
    grid = ws.grid(Z)
    rows, cols = (a.ravel() for a in np.indices(grid.shape))
    pixels, valid = _rendered(grid, rows, cols, ws)
    assert valid.all()
    uninterrupted = tiny_model.encode_image(pixels, Z).detach().float().numpy().reshape(*grid.shape, -1)
    resumed = np.asarray(open_embedding_store(workspace, Z).features[:])
    np.testing.assert_allclose(resumed, uninterrupted, rtol=1e-5, atol=1e-5)


def test_a_different_model_is_refused_until_overwrite(fetched_workspace: Path, tiny_model, other_tiny_model) -> None:
    embed_region(fetched_workspace, Z, tiny_model, batch_size=8, progress=False)
    with pytest.raises(CacheError) as err:
        embed_region(fetched_workspace, Z, other_tiny_model, batch_size=8, progress=False)
    message = str(err.value)
    assert "\n" not in message and "--overwrite" in message and "another --workspace" in message
    assert open_embedding_store(fetched_workspace, Z, model=tiny_model).valid_mask().all()  # untouched

    report = embed_region(fetched_workspace, Z, other_tiny_model, batch_size=8, progress=False, overwrite=True)
    assert report.already_done == 0 and report.embedded == report.total_cells
    store = open_embedding_store(fetched_workspace, Z, model=other_tiny_model)
    assert store.valid_mask().all()
    with pytest.raises(CacheError):
        open_embedding_store(fetched_workspace, Z, model=tiny_model)


def test_prefetch_keeps_order_stays_bounded_and_cancels_on_early_exit() -> None:
    from concurrent.futures import ThreadPoolExecutor

    started: list[int] = []
    lock = threading.Lock()

    def slow_square(n: int) -> int:
        with lock:
            started.append(n)
        time.sleep(0.001 * (n % 3))
        return n * n

    with ThreadPoolExecutor(max_workers=3) as pool:
        assert list(prefetched(pool, slow_square, range(20), depth=4)) == [n * n for n in range(20)]
        started.clear()
        stream = prefetched(pool, slow_square, range(1000), depth=4)
        assert next(stream) == 0
        stream.close()
    assert len(started) <= 5  # the first result plus at most `depth` ahead, never the whole range


def _scores(store, model, query) -> np.ndarray:
    """−CSD of ``query`` against every cell, fusing each block's features with per-cell location
    and a fixed month/hour: the map a query would write, computed block by block."""
    from soundmap import Metadata, score

    out = np.full(store.shape, np.nan)
    for rows, cols, features, valid in store.iter_blocks():
        r, c = np.nonzero(valid)
        lon, lat = store.grid.centers_lonlat(r + rows.start, c + cols.start)
        import torch

        cells = model.fuse(torch.from_numpy(features[r, c]), Metadata(lat=lat, lon=lon, month=6, hour=12))
        out[r + rows.start, c + cols.start] = score(query, cells).double().numpy()
    return out


def test_float16_storage_changes_the_scores_by_less_than_1e_3(fetched_workspace: Path, tiny_model) -> None:
    import torch

    from soundmap import Embedding

    generator = torch.Generator().manual_seed(7)
    query = Embedding.from_raw(torch.randn(1, 512, generator=generator), torch.randn(1, 512, generator=generator) - 4)
    embed_region(fetched_workspace, Z, tiny_model, batch_size=8, progress=False, dtype="float32")
    full = _scores(open_embedding_store(fetched_workspace, Z), tiny_model, query)
    features32 = np.asarray(open_embedding_store(fetched_workspace, Z).features[:])
    embed_region(fetched_workspace, Z, tiny_model, batch_size=8, progress=False, dtype="float16", overwrite=True)
    store = open_embedding_store(fetched_workspace, Z)
    assert str(store.features.dtype) == "float16"
    features16 = np.asarray(store.features[:]).astype(np.float32)
    assert 0 < np.abs(features16 - features32).max() <= 1e-3 * np.abs(features32).max()  # rounded, not garbled
    half = _scores(store, tiny_model, query)
    assert not np.isnan(full).any() and np.ptp(full) > 0
    # measured: ~2e-6 (the float32 rounding of scores near -27); the bound is the issue's
    assert np.abs(half - full).max() < 1e-3


def test_cells_outside_the_aoi_are_marked_outside_and_never_rendered(
        tile_server: TileServer, tmp_path: Path, tiny_model, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from tests.fixtures.embed_workspace import fetch_test_workspace as fetch

    aoi = tmp_path / "aoi.geojson"  # the south-western triangle of the test bbox
    polygon = [[10.0, 50.0], [10.12, 50.0], [10.0, 50.04], [10.0, 50.0]]
    aoi.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [polygon]}}]}))
    workspace = fetch(tile_server, tmp_path, aoi=aoi)
    inside = Workspace.load(workspace).aoi_mask(Z)
    assert 0 < inside.sum() < inside.size
    calls = _count_images(tiny_model, monkeypatch)
    report = embed_region(workspace, Z, tiny_model, batch_size=2, progress=False)
    state = open_embedding_store(workspace, Z).state_array()
    np.testing.assert_array_equal(state == CellState.EMBEDDED, inside)
    np.testing.assert_array_equal(state == CellState.OUTSIDE, ~inside)
    assert (report.embedded, report.outside, report.missing) == (inside.sum(), (~inside).sum(), 0)
    assert sum(calls) == inside.sum()  # the AOI cells only


def test_a_second_embed_on_the_same_store_fails_fast_while_the_first_runs(tmp_path: Path) -> None:
    from soundmap.pipeline.embed import exclusive_lock

    lock = tmp_path / "zoom1.zarr.lock"
    with exclusive_lock(lock):
        with pytest.raises(CacheError, match="another `soundmap embed` is writing"):
            with exclusive_lock(lock):
                pass
    with exclusive_lock(lock):  # released when the first run ends
        pass
