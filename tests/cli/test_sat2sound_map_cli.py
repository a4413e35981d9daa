"""``soundmap map --model sat2sound-sentinel-meta`` end to end on the loopback tile server: a tiny
random-weight Sat2Sound installed under the registry name, the tiny FlanT5 through SOUNDMAP_T5_DIR."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from soundmap.cli.main import run
from tests.fixtures.audio import sine_mix, write_clip
from tests.fixtures.query_workspace import QUERY_BBOX
from tests.fixtures.sat2sound import build_tiny_sat2sound, save_tiny_t5
from tests.fixtures.tileserver import TileServer

NAME = "sat2sound-sentinel-meta"


@pytest.fixture
def sat2sound_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from soundmap.paths import model_dir

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("SOUNDMAP_T5_DIR", str(save_tiny_t5(tmp_path / "t5")))
    build_tiny_sat2sound().save(model_dir() / NAME)
    return write_clip(tmp_path / "birds.wav", sine_mix(3.0, 22050), 22050, 1)


def test_map_with_sat2sound_text_audio_combined_and_an_hour_series(sat2sound_env: Path, tile_server: TileServer,
                                                                   tmp_path: Path, capsys) -> None:
    import soundmap as sm

    out = tmp_path / "map.tif"
    code = run(["map", "--bbox", QUERY_BBOX, "--text", "birds singing", "--audio", str(sat2sound_env), "--combine",
                "--hour", "6-7", "--out", str(out), "--source", tile_server.xyz_template, "--model", NAME,
                "--stride", "5000", "--subcell", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.split() == [str(out), str(tmp_path / "map_subcell.tif")]
    with rasterio.open(tmp_path / "map_subcell.tif") as ds:
        assert ds.count == 2 and np.isfinite(ds.read()).any()
    ws = _map_workspace(tile_server)
    assert tile_server.requests
    with rasterio.open(out) as ds:
        assert ds.count == 2  # one combined query × two hours
        data = ds.read()
        assert "birds singing" in ds.descriptions[0] and "hour=6" in ds.descriptions[0]
    assert np.isfinite(data).all() and (np.abs(data) <= 1.0 + 1e-5).all()  # cosine
    assert not np.allclose(data[0], data[1])  # hour 6 and hour 7 fuse differently
    # the store holds the 196 projected tokens per cell (the model's feature width), and the map is
    # the library's cosine of the fused cell embedding with l2n(l2n(audio) + l2n(text))
    model = sm.load_model(NAME, "cpu")
    store = sm.open_embedding_store(ws, 1, model)
    assert store.features.shape[-1] == model.feature_dim == 196 * 32
    rows, cols = np.nonzero(np.isfinite(data[0]))
    lon, lat = store.grid.centers_lonlat(rows, cols)
    features = torch.from_numpy(np.asarray(store.features[:], dtype=np.float32)[rows, cols])
    query = sm.Embedding.combine(model.encode_audio([str(sat2sound_env)]), model.encode_text(["birds singing"]))
    for band, hour in enumerate((6, 7)):
        cells = model.fuse(features, sm.Metadata(lat=lat, lon=lon, hour=hour))
        np.testing.assert_allclose(data[band][rows, cols], sm.score(query, cells).numpy(), atol=1e-5)


def _map_workspace(tile_server: TileServer) -> Path:
    """The per-region workspace `soundmap map` filled (no --workspace given)."""
    from soundmap.geo.bbox import parse_bbox
    from soundmap.pipeline.query import map_workspace_dir
    from soundmap.tiles.sources import resolve_source

    return map_workspace_dir(parse_bbox(QUERY_BBOX), resolve_source(tile_server.xyz_template), 1, 5000.0, None)


def test_uncertainty_is_refused_for_sat2sound(sat2sound_env: Path, tile_server: TileServer, tmp_path: Path,
                                             capsys) -> None:
    code = run(["map", "--bbox", QUERY_BBOX, "--text", "rain", "--uncertainty", "--out", str(tmp_path / "m.tif"),
                "--source", tile_server.xyz_template, "--model", NAME, "--stride", "5000", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--uncertainty" in err and "Sat2Sound" in err and len(err.splitlines()) == 1


def test_nometa_store_keeps_the_final_embedding(tmp_path: Path, tile_server: TileServer, capsys,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import soundmap as sm
    from soundmap.paths import model_dir

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("SOUNDMAP_T5_DIR", str(save_tiny_t5(tmp_path / "t5")))
    build_tiny_sat2sound(metadata=()).save(model_dir() / "sat2sound-sentinel-nometa")
    out, ws = tmp_path / "m.tif", tmp_path / "ws"
    code = run(["map", "--bbox", QUERY_BBOX, "--text", "rain", "--out", str(out), "--source", tile_server.xyz_template,
                "--model", "sat2sound-sentinel-nometa", "--stride", "5000", "--workspace", str(ws), "--quiet"])
    assert code == 0, capsys.readouterr().err
    model = sm.load_model("sat2sound-sentinel-nometa", "cpu")
    store = sm.open_embedding_store(ws, 1, model)
    assert store.features.shape[-1] == 32  # the 1024-d (here 32-d) cell embedding itself
    with rasterio.open(out) as ds:
        data = ds.read(1)
    rows, cols = np.nonzero(np.isfinite(data))
    cells = torch.from_numpy(np.asarray(store.features[:], dtype=np.float32)[rows, cols])
    expected = sm.score(model.encode_text(["rain"]), model.fuse(cells)).numpy()
    np.testing.assert_allclose(data[rows, cols], expected, atol=1e-5)


def test_query_subcell_writes_token_maps_on_a_14x_finer_aligned_grid(sat2sound_env: Path, tile_server: TileServer,
                                                                     tmp_path: Path, capsys) -> None:
    import soundmap as sm

    ws = tmp_path / "ws"
    assert run(["map", "--bbox", QUERY_BBOX, "--text", "rain", "--hour", "6", "--out", str(tmp_path / "m.tif"),
                "--source", tile_server.xyz_template, "--model", NAME, "--stride", "5000", "--workspace", str(ws),
                "--quiet"]) == 0
    capsys.readouterr()
    out = tmp_path / "q.tif"
    code = run(["query", "--workspace", str(ws), "--text", "rain", "--text", "birds singing", "--hour", "6",
                "--model", NAME, "--subcell", "--out", str(out), "--quiet"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    subcell = tmp_path / "q_subcell.tif"
    assert printed.out.split() == [str(out), str(subcell)]
    with rasterio.open(out) as cells_ds, rasterio.open(subcell) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert ds.crs == cells_ds.crs and ds.count == 2
        assert (ds.width, ds.height) == (14 * cells_ds.width, 14 * cells_ds.height)
        assert ds.transform.a == pytest.approx(cells_ds.transform.a / 14)
        assert ds.transform.e == pytest.approx(cells_ds.transform.e / 14)
        assert (ds.transform.c, ds.transform.f) == pytest.approx((cells_ds.transform.c, cells_ds.transform.f))
        fine = ds.read()
    model = sm.load_model(NAME, "cpu")
    store = sm.open_embedding_store(ws, 1, model)
    valid = np.asarray(store.state[:]) == 1
    rows, cols = np.nonzero(valid)
    lon, lat = store.grid.centers_lonlat(rows, cols)
    features = torch.from_numpy(np.asarray(store.features[:], dtype=np.float32)[rows, cols])
    queries = sm.Embedding.cat([model.encode_text(["rain"]), model.encode_text(["birds singing"])])
    maps = model.token_scores(features, sm.Metadata(lat=lat, lon=lon, hour=6), queries).numpy()
    for k, (r, c) in enumerate(zip(rows, cols)):
        np.testing.assert_allclose(fine[:, 14 * r:14 * r + 14, 14 * c:14 * c + 14], maps[k], atol=1e-5)
    assert np.isnan(fine[0].reshape(store.grid.rows, 14, store.grid.cols, 14).transpose(0, 2, 1, 3)[~valid]).all()
    # a token is scored as the cell would be if it were the whole image: cosine, within [-1, 1]
    assert np.nanmax(np.abs(fine)) <= 1.0 + 1e-5 and not np.allclose(fine[0][np.isfinite(fine[0])], fine[0][0, 0])


def test_wide_token_features_get_smaller_store_chunks() -> None:
    from soundmap.store.embeddings import CHUNK_CELLS, MAX_CHUNK_BYTES, capped_chunk_cells

    assert capped_chunk_cells(CHUNK_CELLS, 512, "float16") == CHUNK_CELLS  # PSM stores are unchanged
    full = capped_chunk_cells(CHUNK_CELLS, 196 * 1024, "float16")  # released Sat2Sound meta tokens
    assert full == 8 and full * full * 196 * 1024 * 2 <= MAX_CHUNK_BYTES
    assert capped_chunk_cells(CHUNK_CELLS, 196 * 1024, "float32") == 8
