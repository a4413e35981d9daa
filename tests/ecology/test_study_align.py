"""``soundmap align`` with the study's encoders on a synthetic study with a known structure.

Tiny random-weight AST / CLIP / RemoteCLIP are served by a loopback Hugging Face hub and loaded
through the real download path. Sound and images share a latent "greenness" per site
(tests/ecology/study_data.py): ``align`` must find a strong, significant correlation when they are
linked, and about the design correlation (≈ 0, not significant) when the images are permuted.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from soundmap.cli.main import run
from soundmap.ecology.stats import cosine_similarity_matrix
from soundmap.ecology.study import combined_embeddings
from tests.fixtures.hf_server import hf_server  # noqa: F401  (fixture)
from tests.fixtures.study_models import (AST_REPO, CLIP_REPO, CLIPSEG_REPO, REMOTECLIP_FILE, REMOTECLIP_REPO,
                                         save_open_clip_checkpoint, save_tiny_ast, save_tiny_clip, save_tiny_clipseg)

from .study_data import design_correlation, site_image, write_study


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("study-models")
    return {"ast": save_tiny_ast(root / "ast"), "clip": save_tiny_clip(root / "clip"),
            "remoteclip": save_open_clip_checkpoint(root / "rc" / REMOTECLIP_FILE),
            "clipseg": save_tiny_clipseg(root / "clipseg")}


@pytest.fixture
def hub(hf_server, saved):
    hf_server.add_dir(AST_REPO, saved["ast"])
    hf_server.add_dir(CLIP_REPO, saved["clip"])
    hf_server.add_file(REMOTECLIP_REPO, REMOTECLIP_FILE, saved["remoteclip"].read_bytes())
    hf_server.add_dir(CLIPSEG_REPO, saved["clipseg"])
    return hf_server


def _align(manifest: Path, out: Path, *extra: str) -> dict:
    code = run(["align", str(manifest), "--audio-encoder", "ast", "--no-bga", "--group-column", "city",
                "--out", str(out), "-q", *extra])
    assert code == 0
    return json.loads(out.read_text())


def test_combined_view_is_the_mean_of_the_two_cosine_similarities() -> None:
    rng = np.random.default_rng(0)
    street, aerial = rng.normal(size=(7, 5)) * 3, rng.normal(size=(7, 9))
    combined = cosine_similarity_matrix(combined_embeddings(street, aerial))
    expected = (cosine_similarity_matrix(street) + cosine_similarity_matrix(aerial)) / 2
    np.testing.assert_allclose(combined, expected, atol=1e-12)


def test_linked_study_is_recovered_by_every_view_and_the_control_is_not(hub, tmp_path: Path, capsys) -> None:
    manifest, audio_t, image_t = write_study(tmp_path / "linked", linked=True)
    assert design_correlation(audio_t, image_t) == pytest.approx(1.0)
    report = _align(manifest, tmp_path / "linked.json", "--image-encoder", "clip", "--combine-views")
    printed = capsys.readouterr().out.splitlines()
    assert printed[:2] == [str(tmp_path / "linked.json"), str(tmp_path / "linked.png")]
    analyses = report["analyses"]
    assert set(analyses) == {"street", "aerial", "combined", "street_vs_aerial"}
    for view in ("street", "aerial", "combined"):
        overall = analyses[view]["overall"]
        assert overall["r"] > 0.6 and overall["p"] <= 0.005, (view, overall)
        assert overall["p_pairs"] < 1e-6                      # the study's plain p: far smaller
        assert set(analyses[view]["groups"]) == {"London", "Tokyo"}
    assert report["encoders"]["audio"]["segment_seconds"] == 10.0
    assert "cos_street(i,j) + cos_aerial(i,j)" in report["combined_view"]
    assert report["study_reference_r"]["overall"]["combined"] == 0.21
    assert (tmp_path / "linked.png").stat().st_size > 10_000

    control, audio_c, image_c = write_study(tmp_path / "control", linked=False, seed=1)
    design = design_correlation(audio_c, image_c)
    assert abs(design) < 0.2
    report = _align(control, tmp_path / "control.json", "--image-encoder", "clip", "--combine-views")
    for view in ("street", "aerial", "combined"):
        overall = report["analyses"][view]["overall"]
        assert abs(overall["r"] - design) < 0.25 and overall["p"] > 0.05, (view, overall)
    # the two image views still agree with each other (they share their latents)
    assert report["analyses"]["street_vs_aerial"]["overall"]["r"] > 0.6


def test_remoteclip_on_imagery_rendered_at_each_recording(hub, tmp_path: Path) -> None:
    """No image column: RemoteCLIP embeds the imagery soundmap renders over each recording's
    footprint from --source — here a local UTM GeoTIFF whose pixels over each site's 2.56 km
    Sentinel-family footprint show that site's scene (sites 0.05° apart along a meridian)."""
    from pyproj import Transformer

    manifest, audio_t, _ = write_study(tmp_path / "s", linked=True, street=False)
    lats, lon = 51.0 + 0.05 * np.arange(len(audio_t)), -0.1
    rows = ["audio,lat,lon,city"] + [f"a{i}.wav,{lat:.4f},{lon},{'London' if i % 2 == 0 else 'Tokyo'}"
                                     for i, lat in enumerate(lats)]
    manifest.write_text("\n".join(rows) + "\n")
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32630", always_xy=True)
    xs, ys = to_utm.transform(np.full(len(lats), lon), lats)
    res, side = 20.0, 128                      # 128 px of 20 m = the 2560 m footprint
    west, north = float(np.min(xs)) - 3000, float(np.max(ys)) + 3000
    width, height = int((np.max(xs) + 3000 - west) / res), int((north - np.min(ys) + 3000) / res)
    pixels = np.zeros((3, height, width), dtype=np.uint8)
    rng = np.random.default_rng(0)
    for t, x, y in zip(audio_t, xs, ys):
        row, col = int(round((north - y) / res)) - side // 2, int(round((x - west) / res)) - side // 2
        pixels[:, row:row + side, col:col + side] = site_image(float(t), rng, aerial=True, size=side).transpose(2, 0, 1)
    raster = tmp_path / "aerial.tif"
    with rasterio.open(raster, "w", driver="GTiff", width=width, height=height, count=3, dtype="uint8",
                       crs="EPSG:32630", transform=Affine(res, 0, west, 0, -res, north)) as dst:
        dst.write(pixels)
    report = _align(manifest, tmp_path / "rendered.json", "--image-encoder", "remoteclip", "--source", str(raster))
    aerial = report["analyses"]["aerial"]["overall"]
    assert set(report["analyses"]) == {"aerial"} and aerial["n"] == len(audio_t)
    assert aerial["r"] > 0.5 and aerial["p"] <= 0.01, aerial
    assert "rendered from" in report["encoders"]["aerial"]


def _one_line_exit_2(capsys, argv: list[str], needle: str) -> None:
    assert run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_bad_input_is_one_line_and_exit_2_before_any_model_is_loaded(tmp_path: Path, capsys) -> None:
    manifest, _, _ = write_study(tmp_path / "s", n=5, street=False)
    base = ["align", str(manifest), "--audio-encoder", "ast", "--no-bga", "-q"]
    _one_line_exit_2(capsys, [*base, "--image-encoder", "clip"], "no street-image column 'street_image'")
    _one_line_exit_2(capsys, [*base, "--image-encoder", "clip", "--street-image-column", "photo"],
                     "no street-image column 'photo'")
    (tmp_path / "s" / "g2.png").write_bytes(b"not an image at all")
    _one_line_exit_2(capsys, [*base, "--image-encoder", "remoteclip"], "cannot be decoded")
    short, _, _ = write_study(tmp_path / "short", n=5, audio_seconds=9.5, street=False)
    _one_line_exit_2(capsys, ["align", str(short), "--audio-encoder", "ast", "--image-encoder", "remoteclip",
                              "--no-bga", "-q"], "shorter than one 10 s AST segment")
    _one_line_exit_2(capsys, [*base, "--image-encoder", "model", "--combine-views"], "--combine-views")
    _one_line_exit_2(capsys, [*base, "--audio-encoder", "clap"], "--audio-encoder 'clap'")


def test_plain_p_is_pearsons_over_the_pairs_and_matches_the_studys_figures() -> None:
    from scipy.stats import pearsonr

    from soundmap.ecology.stats import mantel, pairs_p_value

    rng = np.random.default_rng(4)
    x = rng.normal(size=(15, 3))
    a, b = cosine_similarity_matrix(x), cosine_similarity_matrix(x + rng.normal(scale=2.0, size=x.shape))
    result = mantel(a, b, permutations=99)
    i, j = np.triu_indices(15, k=1)
    assert result.p_pairs == pytest.approx(pearsonr(a[i, j], b[i, j]).pvalue, rel=1e-6)
    # the study's London aerial segmentation: r = 0.12 over 100 sites (4950 pairs), p = 1.1e-17
    assert 1e-18 < pairs_p_value(0.12, 4950) < 1e-16
    assert pairs_p_value(0.12, 4950, "greater") == pytest.approx(pairs_p_value(0.12, 4950) / 2)


def test_segmentation_views_follow_class_proportions() -> None:
    """Pure statistics: class-proportion vectors that follow the sound's latent are aligned; the
    street and aerial BGA analyses get their own names."""
    from soundmap.ecology.study import study_statistics

    t = np.linspace(0, 1, 10)
    audio = np.stack([t, 1 - t, np.full(10, 0.2)], axis=1)
    proportions = np.stack([t, 1 - t], axis=1)
    bga = np.stack([1 - t, t, np.full(10, 0.3)])
    out = study_statistics(audio, {}, segmentations={"aerial_segmentation": (proportions, np.ones(10, bool))},
                           bga=bga, street_bga=bga[::-1].copy(), permutations=199)
    assert out["aerial_segmentation"].overall.r > 0.9 and out["aerial_segmentation"].overall.p <= 0.01
    assert {"bga", "bga_biophony", "street_bga", "street_bga_geophony"} <= set(out)


def test_clipseg_segmentation_and_bga_analyses_through_align(hub, tmp_path: Path) -> None:
    manifest, _, _ = write_study(tmp_path / "s", linked=True)
    report = _align(manifest, tmp_path / "seg.json", "--image-encoder", "clip", "--combine-views",
                    "--segmenter", "clipseg")
    names = set(report["analyses"])
    assert {"street", "aerial", "combined", "aerial_segmentation", "street_segmentation", "bga",
            "bga_anthrophony", "bga_biophony", "bga_geophony", "street_bga", "street_bga_anthrophony"} <= names
    for name in ("aerial_segmentation", "bga_biophony", "street_bga_anthrophony"):
        overall = report["analyses"][name]["overall"]
        assert overall["n"] == 12 and -1.0 <= overall["r"] <= 1.0 and 0.0 < overall["p"] <= 1.0
    assert report["segmenter"] == "clipseg" and "Table 1" in report["segmentation"]
    assert hub.downloads("model.safetensors")
