"""``soundmap explore``'s HTTP API against the real app (uvicorn on 127.0.0.1), a tiny PSM model
and the loopback-fetched workspace: queries, hour changes, composites, uncertainty, clicks,
exports equal to ``soundmap query``, uploads, and bad input answered with one-line 4xx errors
while the server keeps serving."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from soundmap.cli.main import run
from tests.explore.conftest import LiveExplorer, wait_query
from tests.fixtures.audio import sine_mix


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))


def _region_tiles(live: LiveExplorer, key: str, **params: str) -> np.ndarray:
    """Every overlay tile over the region at web zoom 11, stacked (they cover all cells)."""
    import mercantile

    west, south, east, north = live.client.get("api/info").json()["bbox"]
    images = []
    for tile in mercantile.tiles(west, south, east, north, 11):
        response = live.client.get(f"api/tiles/{key}/{tile.z}/{tile.x}/{tile.y}.png", params=params)
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        images.append(_png(response.content))
    return np.stack(images)


def _assert_one_line_4xx(response, fragment: str) -> None:
    assert 400 <= response.status_code < 500, response.text
    message = response.json()["error"]
    assert "\n" not in message and fragment in message, message


def test_page_and_vendored_map_library_are_served_offline(live_explorer: LiveExplorer) -> None:
    client = live_explorer.client
    page = client.get("")
    assert page.status_code == 200 and "static/vendor/leaflet/leaflet.js" in page.text
    assert "https://" not in page.text.split("<body>")[0]  # nothing from a CDN
    assert client.get("static/vendor/leaflet/leaflet.js").status_code == 200
    licence = client.get("static/vendor/leaflet/LICENSE")
    assert licence.status_code == 200 and "BSD 2-Clause" in licence.text
    info = client.get("api/info").json()
    assert info["model"] == "tiny-psm" and info["probabilistic"] and info["zooms"] == [1]
    assert "hour" in info["components"] and info["attribution"]
    assert info["outline"]["geometry"]["type"] == "Polygon"


def test_text_query_fuses_in_background_then_serves_tiles_and_basemap(live_explorer: LiveExplorer) -> None:
    client = live_explorer.client
    first = client.post("api/query", json={"text": ["birds singing"], "hour": 6, "month": 5})
    assert first.status_code == 202  # a new metadata setting: fused in the worker, progress reported
    job = first.json()["pending"]
    assert job["total"] >= 1 and job["label"] == "latlon month=5 hour=6"
    assert client.get("api/info").status_code == 200  # other requests are answered meanwhile
    result = wait_query(client, {"text": ["birds singing"], "hour": 6, "month": 5})
    assert client.get(f"api/job/{job['job']}").json()["finished"]
    low, high = result["ranges"][0]
    assert low < high and result["score"] == "csd"
    tiles = _region_tiles(live_explorer, result["key"])
    opaque = tiles[..., 3] == 255
    assert opaque.any() and (~opaque).any()  # cells with and without imagery
    assert len(np.unique(tiles[..., :3][opaque].reshape(-1, 3), axis=0)) > 3
    web_zoom = client.get("api/info").json()["basemap_zoom"]
    tile = next(iter(live_explorer.explorer.basemap_tiles()[1]))
    assert tile[0] == web_zoom
    imagery = client.get(f"api/basemap/{tile[0]}/{tile[1]}/{tile[2]}")
    assert imagery.status_code in (200, 400)  # one tile of the fixture was refused by the server
    served = [t for t in live_explorer.explorer.basemap_tiles()[1]
              if client.get(f"api/basemap/{t[0]}/{t[1]}/{t[2]}").status_code == 200]
    assert served and client.get(f"api/basemap/{served[0][0]}/{served[0][1]}/{served[0][2]}").content[:1]


def test_hour_change_changes_the_overlay_and_reuses_the_fused_cache(live_explorer: LiveExplorer) -> None:
    client = live_explorer.client
    morning = wait_query(client, {"text": ["birds singing"], "hour": 6, "month": 5})
    night = wait_query(client, {"text": ["birds singing"], "hour": 22, "month": 5})
    assert morning["key"] != night["key"]
    assert not np.array_equal(_region_tiles(live_explorer, morning["key"]), _region_tiles(live_explorer, night["key"]))
    again = client.post("api/query", json={"text": ["traffic noise"], "hour": 6, "month": 5})
    assert again.status_code == 200  # a new query on a prepared setting needs no fusion
    fused = Path(live_explorer.workspace) / "fused"
    assert len([p for p in fused.iterdir() if p.is_dir()]) == 2  # one entry per setting, in the workspace cache


def test_composite_of_three_queries_colours_each_channel(live_explorer: LiveExplorer) -> None:
    client = live_explorer.client
    result = wait_query(client, {"text": ["birds", "traffic", "rain"], "hour": 12})
    assert len(result["ranges"]) == 3
    tiles = _region_tiles(live_explorer, result["key"])
    opaque = tiles[..., 3] == 255
    for channel in range(3):
        assert np.ptp(tiles[..., channel][opaque]) > 100  # each query spans its own range
    _assert_one_line_4xx(client.post("api/query", json={"text": ["a", "b", "c", "d"], "hour": 12}), "three")


def test_uncertainty_layer_and_click_on_a_cell(live_explorer: LiveExplorer) -> None:
    client = live_explorer.client
    result = wait_query(client, {"text": ["insects"], "hour": 20})
    assert result["uncertainty_range"][0] < result["uncertainty_range"][1]
    scores = _region_tiles(live_explorer, result["key"])
    sigma = _region_tiles(live_explorer, result["key"], layer="uncertainty")
    assert not np.array_equal(scores, sigma)
    explorer = live_explorer.explorer
    grid = explorer.grid(1)
    valid = explorer.stores[1].valid_mask()
    row, col = map(int, np.argwhere(valid)[0])
    lon, lat = grid.centers_lonlat([row], [col])
    cell = client.get("api/cell", params={"key": result["key"], "lat": float(lat[0]), "lon": float(lon[0])}).json()
    assert (cell["row"], cell["col"]) == (row, col)
    assert cell["lat"] == pytest.approx(float(lat[0])) and cell["lon"] == pytest.approx(float(lon[0]))
    value = explorer.result(result["key"]).scores[0]
    assert cell["values"][0]["score"] == pytest.approx(float(value[row, col]))
    assert cell["values"][0]["rank"] == int((value[np.isfinite(value)] > value[row, col]).sum()) + 1
    assert cell["cells"] == int(valid.sum()) and cell["uncertainty"] > 0
    image = client.get(cell["image"])
    from soundmap.tiles.render import render_cell

    expected = render_cell(grid, row, col, explorer.workspace.source(), explorer.tile_cache).pixels
    assert np.array_equal(_png(image.content)[..., :3], expected)  # the imagery the model saw
    outside = client.get("api/cell", params={"key": result["key"], "lat": 0.0, "lon": 0.0})
    _assert_one_line_4xx(outside, "outside the mapped region")


def test_exported_cog_equals_soundmap_query(live_explorer: LiveExplorer, capsys, tmp_path: Path) -> None:
    client = live_explorer.client
    result = wait_query(client, {"text": ["birds singing"], "hour": 7, "month": 4})
    exported = client.get("api/export", params={"text": "birds singing", "hour": 7, "month": 4, "kind": "tif"})
    assert exported.status_code == 200
    (tmp_path / "explore.tif").write_bytes(exported.content)
    out = tmp_path / "cli.tif"
    code = run(["query", "--workspace", str(live_explorer.workspace), "--text", "birds singing", "--hour", "7",
                "--month", "4", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    with rasterio.open(tmp_path / "explore.tif") as a, rasterio.open(out) as b:
        profile_a, profile_b = dict(a.profile), dict(b.profile)
        assert np.isnan(profile_a.pop("nodata")) and np.isnan(profile_b.pop("nodata"))  # NaN != NaN
        assert profile_a == profile_b and a.tags() == b.tags()
        assert np.array_equal(a.read(), b.read(), equal_nan=True)
        assert a.descriptions == b.descriptions
        cog = a.read(1)
    shown = live_explorer.explorer.result(result["key"]).scores[0]
    np.testing.assert_allclose(shown, cog, rtol=1e-5, atol=1e-5)  # the page shows what the COG holds
    png = client.get("api/export", params={"text": "birds singing", "hour": 7, "month": 4, "kind": "png"})
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_audio_upload_and_text_plus_audio_query(live_explorer: LiveExplorer, tmp_path: Path) -> None:
    import soundfile

    client = live_explorer.client
    path = tmp_path / "clip.wav"
    soundfile.write(path, sine_mix(2.0, 16_000), 16_000)
    uploaded = client.post("api/upload", files={"file": ("clip.wav", path.read_bytes(), "audio/wav")}).json()
    assert uploaded["seconds"] == pytest.approx(2.0)
    audio_only = wait_query(client, {"audio": [uploaded["id"]], "hour": 12})
    combined = wait_query(client, {"audio": [uploaded["id"]], "text": ["birds"], "combine": True, "hour": 12})
    assert audio_only["labels"] == [f"audio: {uploaded['id']}"]
    assert combined["labels"] == [f"audio: {uploaded['id']} + text: birds"]
    assert audio_only["key"] != combined["key"]


def test_bad_input_is_a_one_line_4xx_and_the_server_keeps_serving(live_explorer: LiveExplorer,
                                                                   tmp_path: Path) -> None:
    import soundfile

    client = live_explorer.client
    _assert_one_line_4xx(client.post("api/query", json={"text": [""], "hour": 12}), "the query is empty")
    _assert_one_line_4xx(client.post("api/query", json={"text": ["   "]}), "the query is empty")
    _assert_one_line_4xx(client.post("api/query", json={"text": ["birds"], "hour": 25}), "--hour 25 is out of range")
    _assert_one_line_4xx(client.post("api/query", json={"text": ["birds"], "hour": "noon"}), "hour must be an integer")
    not_audio = client.post("api/upload", files={"file": ("notes.wav", b"this is not audio" * 100, "audio/wav")})
    _assert_one_line_4xx(not_audio, "not an audio file")
    big = tmp_path / "long.wav"
    soundfile.write(big, sine_mix(70.0, 16_000), 16_000)  # 2.2 MB, over the fixture's 2 MB limit
    _assert_one_line_4xx(client.post("api/upload", files={"file": ("long.wav", big.read_bytes(), "audio/wav")}),
                         "over the 2 MB limit")
    _assert_one_line_4xx(client.post("api/query", json={"text": ["birds"], "audio": ["../../../etc/passwd"]}),
                         "unknown audio upload")
    for path in ("api/files/..%2F..%2Fworkspace.json", "api/files/../../workspace.json",
                 "api/files/%2Fetc%2Fpasswd", "api/files/uploads"):
        response = client.get(path)
        assert 400 <= response.status_code < 500 and "root:" not in response.text, path
    _assert_one_line_4xx(client.get("api/tiles/nope/1/0/0.png"), "unknown or expired result")
    _assert_one_line_4xx(client.get("api/basemap/3/0/0"), "not part of this workspace")
    result = wait_query(client, {"text": ["birds"], "hour": 12})  # still serving
    assert client.get(f"api/tiles/{result['key']}/11/1080/693.png").status_code == 200
    json.dumps(result)


def test_hour_sweep_has_one_common_scale(live_explorer: LiveExplorer) -> None:
    client = live_explorer.client
    sweep = wait_query(client, {"text": ["birds"], "month": 6}, endpoint="api/sweep")
    assert len(sweep["keys"]) == 24 and len(set(sweep["keys"])) == 24
    results = [live_explorer.explorer.result(key) for key in sweep["keys"]]
    low, high = sweep["ranges"][0]
    assert low == min(r.ranges[0][0] for r in results) and high == max(r.ranges[0][1] for r in results)
    assert [r.setting.hour for r in results] == list(range(24))
    fixed = {"low": str(low), "high": str(high)}
    common = [_region_tiles(live_explorer, key, **fixed) for key in sweep["keys"][:2]]
    own = [_region_tiles(live_explorer, key) for key in sweep["keys"][:2]]
    assert not np.array_equal(common[0], own[0])  # the common scale is applied, not each hour's own


def test_score_zoom_and_metadata_switches(live_explorer: LiveExplorer) -> None:
    client = live_explorer.client
    csd = wait_query(client, {"text": ["birds"], "hour": 12})
    cosine = wait_query(client, {"text": ["birds"], "hour": 12, "score": "cosine"})
    assert csd["score"] == "csd" and cosine["score"] == "cosine"
    assert csd["ranges"] != cosine["ranges"] and -1.0 <= cosine["ranges"][0][0] <= cosine["ranges"][0][1] <= 1.0
    inat = wait_query(client, {"text": ["birds"], "hour": 12, "audio_source": "iNat", "caption_source": "qwen"})
    assert inat["setting"] == {"audio_source": "iNat", "caption_source": "qwen", "latlon": "cell centre", "hour": 12}
    no_latlon = wait_query(client, {"text": ["birds"], "hour": 12, "latlon": False})
    assert "latlon" not in no_latlon["setting"] and no_latlon["ranges"] != csd["ranges"]
    _assert_one_line_4xx(client.post("api/query", json={"text": ["birds"], "zoom": 3}), "zoom 3 has no embeddings")
    _assert_one_line_4xx(client.post("api/query", json={"text": ["birds"], "audio_source": "radio"}),
                         "unknown --audio-source")


def test_too_long_clip_is_refused(live_explorer: LiveExplorer, tmp_path: Path) -> None:
    import soundfile

    path = tmp_path / "long.flac"
    soundfile.write(path, sine_mix(40.0, 8_000), 8_000)  # small file, 40 s > the fixture's 30 s
    assert path.stat().st_size < 2 * 2**20
    response = live_explorer.client.post("api/upload", files={"file": ("long.flac", path.read_bytes(), "audio/flac")})
    _assert_one_line_4xx(response, "over the 30 s limit")
    assert list((Path(live_explorer.workspace) / "explore" / "uploads").iterdir()) == []  # nothing kept


def test_streamed_and_in_memory_scoring_agree(query_env) -> None:
    """Regions too large for the in-memory means are scored chunk by chunk from the fused cache:
    same scores either way (CSD and cosine)."""
    from soundmap.explore.session import Explorer, ViewRequest

    in_memory = Explorer(query_env.workspace)
    streamed = Explorer(query_env.workspace, mu_memory_bytes=0)
    try:
        for score in ("csd", "cosine"):
            request = ViewRequest(texts=("birds", "rain"), hour=9, score=score)
            setting = in_memory.plan(request).settings[0]
            in_memory.wait(1, setting)
            streamed.wait(1, setting)
            assert in_memory.prepared(1, setting).mu is not None and streamed.prepared(1, setting).mu is None
            np.testing.assert_allclose(in_memory.query(request).scores, streamed.query(request).scores,
                                       rtol=1e-5, atol=1e-6)
    finally:
        in_memory.close()
        streamed.close()
