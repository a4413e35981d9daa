"""``soundmap query`` end to end through the CLI, on a workspace fetched from the loopback tile
server and embedded with a tiny PSM model: COG properties, tags, nodata, agreement with the
library API (``model.fuse`` + ``soundmap.score``), composites, series, previews, fusion reuse,
interruption and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from pyproj import Transformer

import soundmap as sm
from soundmap.cli.main import run
from soundmap.models.soundscape import SoundscapeModel
from soundmap.query.normalize import sigma_l1
from soundmap.pipeline.workspace import Workspace
from tests.fixtures.query_workspace import QueryEnv


def soundmap(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    code = run([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _query(env: QueryEnv, capsys, out: Path, *args: str) -> list[Path]:
    code, stdout, stderr = soundmap(capsys, "query", "--workspace", env.workspace, "--out", out, "--quiet", *args)
    assert code == 0, stderr
    return [Path(line) for line in stdout.splitlines()]


def _library_scores(env: QueryEnv, query, *, month=None, hour=None, audio_source=None, caption_source=None,
                    latlon: bool = True, method: str = "csd") -> np.ndarray:
    """The heatmap computed with the library API alone: store features → fuse → score (rows × cols)."""
    model = sm.load_model(env.psm, "cpu")
    store = sm.open_embedding_store(env.workspace, 1)
    grid = store.grid
    valid = store.valid_mask()
    rows, cols = np.nonzero(valid)
    features = torch.from_numpy(np.asarray(store.features[:], dtype=np.float32)[rows, cols])
    lon, lat = grid.centers_lonlat(rows, cols) if latlon else (None, None)
    fused = model.fuse(features, sm.Metadata(lat=lat, lon=lon, month=month, hour=hour, audio_source=audio_source,
                                             caption_source=caption_source))
    values = sm.score(query(model), fused, method=method).numpy()
    out = np.full(grid.shape, np.nan, dtype=np.float32)
    out[rows, cols] = values
    return out


def test_text_query_writes_a_georeferenced_cog_with_tags_and_nodata(query_env: QueryEnv, capsys, tmp_path: Path) -> None:
    out = tmp_path / "maps" / "insects.tif"
    paths = _query(query_env, capsys, out, "--text", "sound of insects", "--hour", "20")
    assert paths == [out]
    ws = Workspace.load(query_env.workspace)
    grid = ws.grid(1)
    with rasterio.open(out) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert ds.profile["tiled"] and ds.overviews(1)
        assert ds.count == 1 and ds.dtypes == ("float32",)
        assert ds.res == (grid.stride, grid.stride)
        assert ds.crs == rasterio.crs.CRS.from_user_input(grid.crs)
        assert (ds.width, ds.height) == (grid.cols, grid.rows)
        # the raster covers the requested bbox (its outline, projected to the grid CRS)
        to_grid = Transformer.from_crs("EPSG:4326", ds.crs, always_xy=True)
        w, s, e, n = map(float, query_env.bbox.split(","))
        minx, miny, maxx, maxy = to_grid.transform_bounds(w, s, e, n, densify_pts=21)
        assert ds.bounds.left <= minx and ds.bounds.bottom <= miny
        assert ds.bounds.right >= maxx and ds.bounds.top >= maxy
        assert math.isnan(ds.nodata)
        data = ds.read(1)
        tags = ds.tags()
        assert ds.descriptions[0] == "text: sound of insects | latlon hour=20"
    np.testing.assert_array_equal(np.isnan(data), query_env.lacking)  # nodata exactly where imagery was missing
    assert tags["model"] == query_env.psm
    assert json.loads(tags["query"]) == ["text: sound of insects"]
    assert json.loads(tags["metadata"]) == [{"latlon": "cell centre", "hour": 20}]
    assert tags["score"].startswith("csd")
    assert tags["normalization"].startswith("none")
    assert tags["attribution"] == "Test tiles (c) nobody"


@pytest.mark.parametrize("component", ["none", "month", "hour", "audio_source", "caption_source", "latlon"])
def test_heatmap_equals_the_library_score_with_each_metadata_component(
        query_env: QueryEnv, capsys, tmp_path: Path, component: str) -> None:
    options = {"month": ["--month", "7"], "hour": ["--hour", "5"], "audio_source": ["--audio-source", "iNat"],
               "caption_source": ["--caption-source", "qwen"], "latlon": ["--latlon"], "none": []}[component]
    latlon = component == "latlon"
    out = tmp_path / f"{component}.tif"
    _query(query_env, capsys, out, "--text", "birds singing", *options, *([] if latlon else ["--no-latlon"]))
    kwargs = {"month": 7 if component == "month" else None, "hour": 5 if component == "hour" else None,
              "audio_source": "iNat" if component == "audio_source" else None,
              "caption_source": "qwen" if component == "caption_source" else None}
    expected = _library_scores(query_env, lambda m: m.encode_text(["birds singing"]), latlon=latlon, **kwargs)
    with rasterio.open(out) as ds:
        np.testing.assert_allclose(ds.read(1), expected, rtol=1e-5, atol=1e-5)


def test_audio_and_combined_queries_equal_the_library(query_env: QueryEnv, capsys, tmp_path: Path, write_audio) -> None:
    from tests.fixtures.audio import sine_mix

    clip = write_audio("birds.wav", sine_mix(2.0, 48_000), 48_000)
    out = tmp_path / "audio.tif"
    _query(query_env, capsys, out, "--audio", clip, "--text", "rain", "--audio", clip, "--combine", "--month", "3")
    # --combine with one text and two audio files: the text is added to each audio query
    def combined(model: SoundscapeModel):
        return sm.Embedding.combine(model.encode_audio([str(clip)]), model.encode_text(["rain"]))

    expected = _library_scores(query_env, combined, month=3)
    with rasterio.open(out) as ds:
        assert ds.count == 2
        assert ds.descriptions[0].startswith("audio: birds.wav + text: rain")
        np.testing.assert_allclose(ds.read(1), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ds.read(2), expected, rtol=1e-5, atol=1e-5)
    out_audio = tmp_path / "audio_only.tif"
    _query(query_env, capsys, out_audio, "--audio", clip)
    expected_audio = _library_scores(query_env, lambda m: m.encode_audio([str(clip)]))
    with rasterio.open(out_audio) as ds:
        np.testing.assert_allclose(ds.read(1), expected_audio, rtol=1e-5, atol=1e-5)


def test_cosine_score_option(query_env: QueryEnv, capsys, tmp_path: Path) -> None:
    out = tmp_path / "cos.tif"
    _query(query_env, capsys, out, "--text", "traffic", "--score", "cosine")
    expected = _library_scores(query_env, lambda m: m.encode_text(["traffic"]), method="cosine")
    with rasterio.open(out) as ds:
        np.testing.assert_allclose(ds.read(1), expected, rtol=1e-5, atol=1e-5)
        assert ds.tags()["score"].startswith("cosine")


def test_composite_uncertainty_series_and_previews(query_env: QueryEnv, capsys, tmp_path: Path) -> None:
    out = tmp_path / "m.tif"
    paths = _query(query_env, capsys, out, "--text", "birds", "--text", "traffic", "--text", "rain",
                   "--hour", "6-7", "--rgb", "--uncertainty", "--normalize", "minmax", "--png", "--gif")
    names = sorted(p.name for p in paths)
    assert names == sorted(["m.tif", "m_norm.tif", "m_uncertainty.tif", "m_rgb_t01.tif", "m_rgb_t02.tif",
                            "m.png", "m_q1.gif", "m_q2.gif", "m_q3.gif"])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("m", "."))) == names  # no temp files
    with rasterio.open(out) as ds:
        raw = ds.read()  # 6 bands: query-major, 2 hours each
        assert ds.descriptions[1] == "text: birds | latlon hour=7"
    with rasterio.open(tmp_path / "m_norm.tif") as ds:
        norm = ds.read()
        assert "minmax" in ds.tags()["normalization"]
    valid = ~query_env.lacking
    for q in range(3):
        series = raw[2 * q:2 * q + 2]
        low, high = np.nanmin(series), np.nanmax(series)  # one scale over the region AND the series
        np.testing.assert_allclose(norm[2 * q:2 * q + 2][:, valid], ((series - low) / (high - low))[:, valid],
                                   rtol=1e-5, atol=1e-6)
        assert np.nanmin(norm[2 * q:2 * q + 2]) == 0.0 and np.nanmax(norm[2 * q:2 * q + 2]) == 1.0
    assert np.isnan(norm[:, query_env.lacking]).all()
    for step in range(2):
        with rasterio.open(tmp_path / f"m_rgb_t{step + 1:02d}.tif") as ds:
            assert ds.count == 3 and ds.dtypes == ("uint8",) * 3 and ds.nodata == 0
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
            rgb = ds.read()
        assert (rgb[:, query_env.lacking] == 0).all() and (rgb[:, valid] >= 1).all()
        for q in range(3):  # each channel is its query's normalised band, 1..255
            expected = 1 + np.rint(norm[2 * q + step][valid] * 254)
            np.testing.assert_array_equal(rgb[q][valid], expected.astype(np.uint8))
    # uncertainty = ‖σ‖₁ of the fused image embedding, by the library
    model = sm.load_model(query_env.psm, "cpu")
    store = sm.open_embedding_store(query_env.workspace, 1)
    rows, cols = np.nonzero(valid)
    lon, lat = store.grid.centers_lonlat(rows, cols)
    features = torch.from_numpy(np.asarray(store.features[:], dtype=np.float32)[rows, cols])
    with rasterio.open(tmp_path / "m_uncertainty.tif") as ds:
        assert ds.count == 2
        for step, hour in enumerate((6, 7)):
            fused = model.fuse(features, sm.Metadata(lat=lat, lon=lon, hour=hour))
            np.testing.assert_allclose(ds.read(step + 1)[rows, cols], sigma_l1(fused.logvar.numpy()), rtol=1e-5)
    with Image.open(tmp_path / "m.png") as image:
        assert image.format == "PNG" and image.size[0] > 300
    for q in range(3):
        with Image.open(tmp_path / f"m_q{q + 1}.gif") as image:
            assert image.format == "GIF" and image.n_frames == 2


def test_percentile_normalisation_and_bbox_restriction(query_env: QueryEnv, capsys, tmp_path: Path) -> None:
    full = tmp_path / "full.tif"
    _query(query_env, capsys, full, "--text", "water", "--normalize", "percentile")
    with rasterio.open(tmp_path / "full_norm.tif") as ds:
        norm = ds.read(1)
    with rasterio.open(full) as ds:
        raw = ds.read(1)
        transform = ds.transform
    low, high = np.nanpercentile(raw, [2, 98])
    expected = np.clip((raw - low) / (high - low), 0, 1)
    np.testing.assert_allclose(norm, expected, atol=2e-3)  # histogram percentiles: within a bin or so
    part = tmp_path / "part.tif"
    _query(query_env, capsys, part, "--text", "water", "--bbox", "10.08,50.03,10.14,50.07")
    with rasterio.open(part) as ds:
        sub = ds.read(1)
        col0, row0 = (~transform) @ (ds.transform.c, ds.transform.f)
        assert ds.res == (abs(transform.a), abs(transform.e))
    r0, c0 = int(round(row0)), int(round(col0))
    assert sub.shape[0] < raw.shape[0] or sub.shape[1] < raw.shape[1]
    np.testing.assert_array_equal(sub, raw[r0:r0 + sub.shape[0], c0:c0 + sub.shape[1]])


def _count_fused_rows(monkeypatch: pytest.MonkeyPatch, fail_on_call: int | None = None) -> list[int]:
    calls: list[int] = []
    original = SoundscapeModel.fuse

    def counting(self, image_features, metadata=None, **kwargs):
        calls.append(int(image_features.shape[0]))
        if fail_on_call is not None and len(calls) == fail_on_call:
            raise KeyboardInterrupt
        return original(self, image_features, metadata, **kwargs)

    monkeypatch.setattr(SoundscapeModel, "fuse", counting)
    return calls


def test_three_queries_fuse_once_and_a_second_call_reuses_cached_fusions(
        query_env: QueryEnv, capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_fused_rows(monkeypatch)
    valid_cells = int((~query_env.lacking).sum())
    _query(query_env, capsys, tmp_path / "one.tif", "--text", "birds", "--hour", "20", "--no-fused-cache")
    assert sum(calls) == valid_cells  # every cell fused exactly once
    calls.clear()
    _query(query_env, capsys, tmp_path / "three.tif", "--text", "birds", "--text", "rain", "--text", "traffic",
           "--hour", "20", "--rgb")
    assert sum(calls) == valid_cells  # three queries, still one fusion pass
    calls.clear()
    _query(query_env, capsys, tmp_path / "again.tif", "--text", "wind", "--hour", "20")
    assert calls == []  # fused embeddings came from the workspace cache
    _query(query_env, capsys, tmp_path / "other_hour.tif", "--text", "wind", "--hour", "21")
    assert sum(calls) == valid_cells  # another metadata setting is another cache entry
    with rasterio.open(tmp_path / "one.tif") as a, rasterio.open(tmp_path / "three.tif") as b:
        np.testing.assert_allclose(a.read(1), b.read(1), rtol=1e-6)  # one query or three: same numbers
    with rasterio.open(tmp_path / "again.tif") as cached:
        values = cached.read(1)
    expected = _library_scores(query_env, lambda m: m.encode_text(["wind"]), hour=20)
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("where", ["fusion", "previews"])
def test_an_interrupted_query_leaves_no_output(query_env: QueryEnv, capsys, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    if where == "fusion":
        _count_fused_rows(monkeypatch, fail_on_call=1)
    else:  # every GeoTIFF is already converted, only not yet renamed into place
        import soundmap.query.engine as engine

        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr(engine, "write_map_png", interrupted)
    out_dir = tmp_path / "out"
    code, _, stderr = soundmap(capsys, "query", "--workspace", query_env.workspace, "--out", out_dir / "m.tif",
                               "--text", "birds", "--uncertainty", "--normalize", "minmax", "--png", "--quiet")
    assert code == 130 and "interrupted" in stderr
    assert list(out_dir.iterdir()) == []  # no output, no temporary, no scratch directory


@pytest.mark.parametrize("args, message", [
    (["--text", "x", "--model", "no-such-model"], "not installed"),
    ([], "at least one --text or --audio"),
    (["--text", "x", "--hour", "25"], "--hour 25 is out of range"),
    (["--text", "x", "--month", "13"], "--month 13 is out of range"),
    (["--text", "a", "--text", "b", "--rgb"], "exactly three queries"),
    (["--text", "x", "--gif"], "--gif animates a series"),
    (["--text", "x", "--score", "l2"], "--score must be csd or cosine"),
    (["--text", "x", "--zoom", "3"], "no embeddings for zoom 3"),
])
def test_bad_input_is_one_line_and_exit_2(query_env: QueryEnv, capsys, tmp_path: Path, args: list[str],
                                          message: str) -> None:
    code, stdout, stderr = soundmap(capsys, "query", "--workspace", query_env.workspace, "--out",
                                    tmp_path / "m.tif", "--quiet", *args)
    assert code == 2
    assert stderr.count("\n") == 1 and stderr.startswith("soundmap: error:") and message in stderr
    assert not (tmp_path / "m.tif").exists()


def test_undecodable_audio_is_one_line_and_exit_2(query_env: QueryEnv, capsys, tmp_path: Path) -> None:
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage that is not audio")
    code, _, stderr = soundmap(capsys, "query", "--workspace", query_env.workspace, "--out", tmp_path / "m.tif",
                               "--audio", bad, "--quiet")
    assert code == 2 and stderr.count("\n") == 1 and "broken.wav" in stderr
    assert not (tmp_path / "m.tif").exists()


def test_query_before_embed_is_one_line_and_exit_2(query_env: QueryEnv, capsys, tmp_path: Path) -> None:
    import shutil

    shutil.rmtree(query_env.workspace / "embeddings")
    code, _, stderr = soundmap(capsys, "query", "--workspace", query_env.workspace, "--out", tmp_path / "m.tif",
                               "--text", "birds", "--quiet")
    assert code == 2 and stderr.count("\n") == 1 and "soundmap embed" in stderr


def test_uncertainty_with_a_deterministic_model_is_one_line_error(tiny_geoclap_model) -> None:
    from soundmap.errors import InputError
    from soundmap.query.plan import QueryOptions, make_plan

    geoclap = tiny_geoclap_model
    with pytest.raises(InputError, match="--uncertainty needs a probabilistic"):
        make_plan(QueryOptions(out="m.tif", texts=("x",), uncertainty=True), geoclap)
    plan = make_plan(QueryOptions(out="m.tif", texts=("x",)), geoclap)
    assert plan.score == "cosine"  # the model's default


def test_query_with_another_model_than_the_embeddings_is_one_line_error(query_env: QueryEnv, capsys, tmp_path: Path,
                                                                        tiny_geoclap_model) -> None:
    from soundmap.paths import model_dir

    tiny_geoclap_model.save(model_dir() / "tiny-geoclap")
    code, _, stderr = soundmap(capsys, "query", "--workspace", query_env.workspace, "--out", tmp_path / "m.tif",
                               "--text", "birds", "--model", "tiny-geoclap", "--quiet")
    assert code == 2 and stderr.count("\n") == 1 and "were made with model tiny-psm" in stderr
