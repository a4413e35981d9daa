"""Registry of released checkpoints, resumable verified downloads, pull, and the CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from soundmap.cli.main import run
from soundmap.download import download, normalize_url
from soundmap.errors import DownloadError, ModelError
from soundmap.models.registry import load_registry, pull_model
from soundmap.models.soundscape import load_model
from soundmap.paths import model_dir
from tests.fixtures.tiny_models import write_author_checkpoint


def test_registry_lists_the_twelve_released_experiments() -> None:
    registry = load_registry()
    entries = [e for e in registry.entries.values() if e.variant in ("psm", "geoclap")]  # + Sat2Sound's six
    assert len(entries) == 12
    combos = {(e.dataset, e.family, e.variant, bool(e.metadata)) for e in entries}
    expected = {(d, f, v, m) for d, fams in (("GeoSound", ("bing", "sentinel")), ("SoundingEarth", ("googleEarth",)))
                for f in fams for v in ("psm", "geoclap") for m in (False, True)}
    assert combos == expected
    entry = registry.get("psm-geosound-sentinel-meta")
    assert entry.experiment == "GeoSound_pcmepp_metadata_sentinel"
    assert entry.folder_path == "z2tpbd70/epoch=0-I2S_Recall=0.666.ckpt"
    assert registry.folder_url.startswith("https://drive.google.com/drive/folders/")
    with pytest.raises(ModelError, match="not a released model"):
        registry.get("psm-mars")


def test_google_drive_links_are_normalised() -> None:
    direct = "https://drive.usercontent.google.com/download?id=AbC_1-x&export=download&confirm=t"
    assert normalize_url("https://drive.google.com/file/d/AbC_1-x/view?usp=sharing") == direct
    assert normalize_url("https://drive.google.com/open?id=AbC_1-x") == direct
    assert normalize_url("https://drive.google.com/uc?id=AbC_1-x&export=download") == direct
    assert normalize_url("http://127.0.0.1:8000/a.ckpt") == "http://127.0.0.1:8000/a.ckpt"
    with pytest.raises(DownloadError, match="folder"):
        normalize_url("https://drive.google.com/drive/folders/1RaMykYcGeZTJ0W3nLuVVDv95azojt1T4")


def test_download_resumes_a_partial_file_and_verifies(file_server, tmp_path: Path) -> None:
    data = bytes(range(256)) * 4000  # 1,024,000 bytes
    file_server.files["/m.ckpt"] = data
    dest = tmp_path / "m.ckpt"
    Path(str(dest) + ".part").write_bytes(data[:300_000])
    got = download(file_server.url_for("m.ckpt"), dest, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    assert got.read_bytes() == data and not Path(str(dest) + ".part").exists()
    assert file_server.requests == [("/m.ckpt", "bytes=300000-", 206)]
    # a finished file with a matching hash is reused without any request
    download(file_server.url_for("m.ckpt"), dest, sha256=hashlib.sha256(data).hexdigest())
    assert len(file_server.requests) == 1


def test_download_retries_a_dropped_connection_from_where_it_stopped(file_server, tmp_path: Path) -> None:
    data = b"x" * 500_000 + b"y" * 500_000
    file_server.files["/cut.ckpt"] = data
    file_server.cut_after, file_server.cut_next = 300_000, 1
    got = download(file_server.url_for("cut.ckpt"), tmp_path / "cut.ckpt", sha256=hashlib.sha256(data).hexdigest())
    assert got.read_bytes() == data
    (first, _, status1), (_, resumed, status2) = file_server.requests
    assert (status1, status2) == (200, 206)
    offset = int(resumed.removeprefix("bytes=").rstrip("-"))
    assert 0 < offset <= 300_000  # resumed from what had arrived, not from zero


def test_server_ignoring_range_restarts_cleanly(file_server, tmp_path: Path) -> None:
    data = b"abc" * 10_000
    file_server.files["/r.ckpt"] = data
    file_server.honour_range = False
    dest = tmp_path / "r.ckpt"
    Path(str(dest) + ".part").write_bytes(b"garbage-prefix")
    assert download(file_server.url_for("r.ckpt"), dest).read_bytes() == data


def test_hash_mismatch_deletes_the_file(file_server, tmp_path: Path) -> None:
    file_server.files["/bad.ckpt"] = b"not the expected bytes"
    dest = tmp_path / "bad.ckpt"
    with pytest.raises(DownloadError, match="SHA-256 mismatch") as err:
        download(file_server.url_for("bad.ckpt"), dest, sha256="0" * 64)
    assert "\n" not in str(err.value)
    assert not dest.exists() and not Path(str(dest) + ".part").exists()
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(file_server.url_for("missing.ckpt"), tmp_path / "missing.ckpt")


def test_pull_by_url_imports_the_checkpoint(file_server, tiny_geoclap_model, tmp_path: Path) -> None:
    ckpt = write_author_checkpoint(tiny_geoclap_model, tmp_path / "src.ckpt")
    file_server.files["/files/geo.ckpt"] = ckpt.read_bytes()
    path = pull_model("my-geoclap", url=file_server.url_for("files/geo.ckpt"))
    model = load_model("my-geoclap", device="cpu")
    assert path == model_dir() / "my-geoclap" and model.config.variant == "geoclap"
    assert model.config.source["url"].endswith("/files/geo.ckpt")
    assert not (model_dir().parent / "downloads" / "my-geoclap.ckpt").exists()
    # the CLI names a model pulled by URL alone after the file
    assert run(["models", "pull", "--url", file_server.url_for("files/geo.ckpt"), "-q"]) == 0
    assert (model_dir() / "geo" / "model.safetensors").is_file()


def test_pull_registry_entry_uses_its_hash_and_checks_the_variant(file_server, tiny_psm_model, tiny_geoclap_model,
                                                                  tmp_path: Path, monkeypatch) -> None:
    psm_bytes = write_author_checkpoint(tiny_psm_model, tmp_path / "psm.ckpt").read_bytes()
    geo_bytes = write_author_checkpoint(tiny_geoclap_model, tmp_path / "geo.ckpt").read_bytes()
    file_server.files["/psm.ckpt"] = psm_bytes
    file_server.files["/geo.ckpt"] = geo_bytes
    registry_file = tmp_path / "models.yaml"
    registry_file.write_text(yaml.safe_dump({"readme": "https://example.invalid/readme", "models": {
        "psm-geosound-sentinel-meta": {"variant": "psm", "family": "sentinel", "metadata": "all", "dataset": "GeoSound",
                                       "experiment": "e1", "url": file_server.url_for("psm.ckpt"),
                                       "sha256": hashlib.sha256(psm_bytes).hexdigest(), "size": len(psm_bytes)},
        "psm-wrong": {"variant": "psm", "family": "sentinel", "metadata": "all", "dataset": "GeoSound",
                      "experiment": "e2", "url": file_server.url_for("geo.ckpt")},
        "psm-badhash": {"variant": "psm", "family": "sentinel", "metadata": "all", "dataset": "GeoSound",
                        "experiment": "e3", "url": file_server.url_for("psm.ckpt"), "sha256": "f" * 64},
        "psm-nolink": {"variant": "psm", "family": "sentinel", "metadata": "all", "dataset": "GeoSound",
                       "experiment": "e4", "folder_path": "run/epoch=0.ckpt", "url": None},
    }}))
    monkeypatch.setenv("SOUNDMAP_REGISTRY", str(registry_file))
    pull_model("psm-geosound-sentinel-meta")
    assert load_model("psm-geosound-sentinel-meta", device="cpu").config.source["registry_name"] == "psm-geosound-sentinel-meta"
    with pytest.raises(ModelError, match="registry says"):
        pull_model("psm-wrong")
    assert not (model_dir() / "psm-wrong").exists()
    with pytest.raises(DownloadError, match="SHA-256 mismatch"):
        pull_model("psm-badhash")
    with pytest.raises(ModelError, match=r"no download source is recorded for psm-nolink; download run/epoch=0.ckpt "
                                         r"from https://example.invalid/readme"):
        pull_model("psm-nolink")


def test_cli_import_list_info_remove(tiny_psm_model, tmp_path: Path, capsys, monkeypatch) -> None:
    ckpt = write_author_checkpoint(tiny_psm_model, tmp_path / "c.ckpt")
    assert run(["models", "import", str(ckpt), "--name", "cli-psm", "-q"]) == 0
    capsys.readouterr()
    assert run(["models", "list"]) == 0
    listing = capsys.readouterr().out
    assert "cli-psm" in listing and "psm" in listing and "sentinel" in listing and "all" in listing and "MB" in listing
    assert run(["models", "info", "cli-psm"]) == 0
    info = capsys.readouterr().out
    sha = json.loads((model_dir() / "cli-psm" / "config.json").read_text())["weights_sha256"]
    assert sha in info and "CSD" in info and "Sentinel-2" in info
    assert run(["models", "list", "--available"]) == 0
    assert "geoclap-soundingearth-googleearth-nometa" in capsys.readouterr().out
    assert run(["models", "remove", "cli-psm", "-q"]) == 0
    assert not (model_dir() / "cli-psm").exists()
    assert run(["models", "info", "cli-psm"]) == 2
    assert "not installed" in capsys.readouterr().err
    assert run(["models", "import", str(tmp_path / "nope.ckpt"), "--name", "x"]) == 2
    monkeypatch.setenv("SOUNDMAP_OFFLINE", "1")
    assert run(["models", "pull", "psm-geosound-bing-meta"]) == 2  # offline: names the file and the manual route
    assert "models import FILE --name psm-geosound-bing-meta" in capsys.readouterr().err
