"""``soundmap align``: the statistics on synthetic embeddings, the manifest, and a tiny-model run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from soundmap.ecology.align import AlignOptions, align_statistics, read_manifest, run_align, scalar_similarity
from soundmap.errors import InputError



def test_scalar_similarity_by_hand() -> None:
    np.testing.assert_allclose(scalar_similarity(np.array([0.0, 0.25, 1.0])),
                               [[1, 0.75, 0], [0.75, 1, 0.25], [0, 0.25, 1]])


def test_audio_that_follows_the_imagery_is_aligned_overall_and_per_group() -> None:
    rng = np.random.default_rng(0)
    n = 30
    images = rng.normal(size=(n, 8))
    audio = images @ rng.normal(size=(8, 16)) * 0.2 + images[:, :1] * 0 + rng.normal(size=(n, 16)) * 0.05
    audio[:, :8] += images                              # audio embedding carries the image signal
    groups = np.array(["london"] * 15 + ["tokyo"] * 15)
    out = align_statistics(audio, images=images, groups=groups, permutations=499, seed=0)
    assert set(out) == {"image"}
    assert out["image"].overall.r > 0.5 and out["image"].overall.p < 0.01
    assert set(out["image"].groups) == {"london", "tokyo"}
    assert all(g.p < 0.01 and g.n == 15 for g in out["image"].groups.values())


def test_bga_similarity_leaves_out_recordings_without_land_cover() -> None:
    rng = np.random.default_rng(1)
    n = 20
    bga = rng.uniform(size=(3, n))
    audio = bga.T + rng.normal(size=(n, 3)) * 0.01      # sounds exactly like the land cover
    bga_with_gaps = bga.copy()
    bga_with_gaps[:, [3, 7]] = np.nan
    out = align_statistics(audio, bga=bga_with_gaps, permutations=199, seed=0)
    assert set(out) == {"bga", "bga_anthrophony", "bga_biophony", "bga_geophony"}
    assert out["bga"].overall.n == 18
    assert out["bga"].overall.r > 0.95 and out["bga"].overall.p == pytest.approx(1 / 200)
    assert 3 not in out["bga"].used and 7 not in out["bga"].used


def test_unrelated_audio_is_not_aligned() -> None:
    rng = np.random.default_rng(4)
    out = align_statistics(rng.normal(size=(25, 8)), images=rng.normal(size=(25, 8)), permutations=999, seed=0)
    assert out["image"].overall.p > 0.05


def _manifest(tmp_path: Path, rows: list[str], header: str = "audio,lat,lon,city") -> Path:
    (tmp_path / "a.wav").write_bytes(b"RIFF")
    path = tmp_path / "m.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_manifest_paths_are_relative_to_the_csv_and_groups_are_read(tmp_path: Path) -> None:
    path = _manifest(tmp_path, [f"a.wav,50.0,10.{i},c{i % 2}" for i in range(4)])
    manifest = read_manifest(path, group_column="city")
    assert manifest.audio[0] == tmp_path / "a.wav"
    assert manifest.groups.tolist() == ["c0", "c1", "c0", "c1"]
    assert manifest.images is None


@pytest.mark.parametrize("rows, header, group, message", [
    (["a.wav,50,10"] * 4, "audio,lat", None, "lacks column(s) lon"),
    (["a.wav,95,10"] * 4, "audio,lat,lon", None, "row 2 has no valid lat/lon"),
    (["b.wav,50,10"] * 4, "audio,lat,lon", None, "does not exist"),
    (["a.wav,50,10"] * 3, "audio,lat,lon", None, "at least 4"),
    (["a.wav,50,10"] * 4, "audio,lat,lon", "city", "is not a column"),
])
def test_bad_manifests_are_input_errors(tmp_path: Path, rows, header, group, message) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_manifest(_manifest(tmp_path, rows, header), group_column=group)


@pytest.fixture
def tiny_model_name(installed_tiny_model: str, clap_files: Path, monkeypatch) -> str:
    """The tiny PSM model (tests/fixtures/tiny_models.py) installed in this test's cache: its name."""
    monkeypatch.setenv("SOUNDMAP_CLAP_DIR", str(clap_files))
    return installed_tiny_model


def test_align_runs_end_to_end_with_a_tiny_model(tmp_path: Path, tiny_model_name: str, lonlat_landcover: Path,
                                                 capsys) -> None:
    from PIL import Image

    from soundmap.cli.main import run
    from tests.fixtures.audio import sine_mix, write_clip

    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        write_clip(tmp_path / f"r{i}.wav", sine_mix(1.0, 16000, freqs=(200.0 + 150 * i,)), 16000)
        Image.fromarray(rng.integers(0, 255, size=(40, 40, 3), dtype=np.uint8)).save(tmp_path / f"r{i}.png")
        lon, lat = 9.996 + 0.0015 * i, 49.997 + 0.001 * i
        rows.append(f"r{i}.wav,r{i}.png,{lat},{lon},{'a' if i < 4 else 'b'}")
    manifest = tmp_path / "recordings.csv"
    manifest.write_text("audio,image,lat,lon,group\n" + "\n".join(rows) + "\n")
    out = tmp_path / "res" / "align.json"
    code = run(["align", str(manifest), "--model", str(tiny_model_name), "--zoom", "1", "--landcover",
                str(lonlat_landcover), "--permutations", "99", "--out", str(out), "-q", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    assert report["n_recordings"] == 6 and report["permutations"] == 99
    assert set(report["analyses"]) >= {"image", "bga", "bga_anthrophony", "bga_biophony", "bga_geophony"}
    image = report["analyses"]["image"]
    assert image["overall"]["n"] == 6 and image["overall"]["pairs"] == 15
    assert 1 / 100 <= image["overall"]["p"] <= 1
    assert set(image["groups"]) == {"a"}                    # group b has 2 recordings: no test
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_align_renders_imagery_at_the_recordings_with_the_tile_pipeline(tmp_path: Path, tiny_model_name: str,
                                                                       tile_server, capsys) -> None:
    from soundmap.cli.main import run
    from tests.fixtures.audio import sine_mix, write_clip

    rows = []
    for i in range(5):
        write_clip(tmp_path / f"r{i}.wav", sine_mix(1.0, 16000, freqs=(300.0 + 200 * i,)), 16000)
        rows.append(f"r{i}.wav,{50.0 + 0.01 * i},{10.0 + 0.02 * i}")
    manifest = tmp_path / "recordings.csv"
    manifest.write_text("audio,lat,lon\n" + "\n".join(rows) + "\n")
    import rasterio
    from affine import Affine

    bga_raster = tmp_path / "bga.tif"          # 0.01° cells: every recording in a different cell
    with rasterio.open(bga_raster, "w", driver="GTiff", width=30, height=20, count=3, dtype="float32",
                       crs="EPSG:4326", transform=Affine(0.01, 0, 9.9, 0, -0.01, 50.1)) as dst:
        dst.write(np.random.default_rng(0).uniform(size=(3, 20, 30)).astype(np.float32))
    out = tmp_path / "align.json"
    code = run(["align", str(manifest), "--model", str(tiny_model_name), "--source", tile_server.xyz_template,
                "--bga-raster", str(bga_raster), "--permutations", "49", "--out", str(out), "-q", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    assert set(report["analyses"]) == {"image", "bga", "bga_anthrophony", "bga_biophony", "bga_geophony"}
    assert report["analyses"]["image"]["overall"]["n"] == 5
    assert report["analyses"]["bga"]["overall"]["n"] == 5
    assert report["landcover"] == str(bga_raster)
    assert tile_server.tiles_requested                       # imagery came through fetch + render


def test_bga_raster_is_sampled_at_the_cell_holding_each_recording(tmp_path: Path) -> None:
    import rasterio
    from affine import Affine
    from pyproj import Transformer

    from soundmap.ecology.align import sample_bga_raster

    values = np.arange(3 * 2 * 3, dtype=np.float32).reshape(3, 2, 3) / 20
    values[:, 1, 2] = np.nan
    path = tmp_path / "bga.tif"
    with rasterio.open(path, "w", driver="GTiff", width=3, height=2, count=3, dtype="float32", crs="EPSG:32632",
                       transform=Affine(100, 0, 500000, 0, -100, 5000200), nodata=float("nan")) as dst:
        dst.write(values)
    x = np.array([500050, 500290, 500150, 500250, 499990])    # cells (0,0), (1,2) nodata, (1,1), (0,2); outside
    y = np.array([5000150, 5000010, 5000099, 5000199, 5000150])
    lon, lat = Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True).transform(x, y)
    got = sample_bga_raster(path, lon, lat)
    np.testing.assert_allclose(got[:, 0], values[:, 0, 0])
    np.testing.assert_allclose(got[:, 2], values[:, 1, 1])
    np.testing.assert_allclose(got[:, 3], values[:, 0, 2])
    assert np.all(np.isnan(got[:, [1, 4]]))


def test_align_cli_rejects_bad_options(tmp_path: Path, capsys) -> None:
    from soundmap.cli.main import run

    manifest = _manifest(tmp_path, ["a.wav,50,10,x"] * 4)
    assert run(["align", str(manifest), "--permutations", "0", "-q"]) == 2
    assert "--permutations" in capsys.readouterr().err
    assert run(["align", str(manifest), "--zoom", "2", "-q"]) == 2
    assert run(["align", str(tmp_path / "none.csv"), "-q"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_align_options_out_must_be_json(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=".json"):
        run_align(AlignOptions(manifest=tmp_path / "m.csv", out=tmp_path / "align.txt"))
