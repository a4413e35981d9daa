"""``models pull NAME`` from the authors' Drive folder (a loopback Drive), its failure modes, and
the lock file (trust on first use)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from soundmap.cli.main import run
from soundmap.errors import DownloadError, ModelError
from soundmap.models import lockfile
from soundmap.models.drive import list_tree, make_session
from soundmap.models.registry import hf_alternatives, installed_models, load_registry, pull_model
from soundmap.models.soundscape import load_model
from soundmap.paths import cache_dir, model_dir
from tests.fixtures.drive_server import PSM_FOLDER_ID, DriveServer, drive_server  # noqa: F401
from tests.fixtures.tiny_models import build_tiny_model, write_author_checkpoint

NAME = "psm-geosound-sentinel-meta"
PATH = "z2tpbd70/epoch=0-I2S_Recall=0.666.ckpt"


@pytest.fixture(scope="module")
def psm_ckpt_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The tiny PSM (sentinel, all metadata) as the authors' Lightning checkpoint."""
    path = tmp_path_factory.mktemp("ckpt") / "psm.ckpt"
    return write_author_checkpoint(build_tiny_model("psm"), path).read_bytes()


@pytest.fixture()
def psm_drive(drive_server: DriveServer, psm_ckpt_bytes: bytes, clap_files: Path,
              monkeypatch: pytest.MonkeyPatch) -> DriveServer:
    """The PSM folder as the authors lay it out: one wandb run directory per experiment (decoys
    around the one we want); CLAP files present so pulls make no Hub request."""
    monkeypatch.setenv("SOUNDMAP_CLAP_DIR", str(clap_files))
    drive_server.add_file(PSM_FOLDER_ID, "k81mf7ro/epoch=0-I2S_Recall=0.497.ckpt", b"decoy" * 100)
    drive_server.add_file(PSM_FOLDER_ID, "README.txt", b"checkpoints of the PSM paper")
    drive_server.add_file(PSM_FOLDER_ID, PATH, psm_ckpt_bytes)
    return drive_server


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = run(args)
    err = capsys.readouterr().err
    return code, err


def _assert_one_line_failure(code: int, err: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("soundmap: error: "), err
    assert "soundmap models import FILE --name " + NAME in err, err  # the manual route
    assert NAME not in {m.name for m in installed_models()}, "no half-imported model"
    assert not (model_dir() / NAME).exists()


def _file_id(server: DriveServer, name: str) -> str:
    return next(fid for fid, (fname, _) in server.files.items() if fname == name)


def test_pull_lists_the_folder_downloads_the_one_file_and_imports_it(psm_drive: DriveServer,
                                                                     psm_ckpt_bytes: bytes) -> None:
    path = pull_model(NAME)
    model = load_model(NAME, device="cpu")
    assert path == model_dir() / NAME and model.config.variant == "psm" and model.config.family == "sentinel"
    file_id = _file_id(psm_drive, PATH.split("/")[-1])
    # listed the root and the run directory only, downloaded one file, once
    run_dir = next(cid for cid, cname, _ in psm_drive.folders[PSM_FOLDER_ID][1] if cname == "z2tpbd70")
    assert [r[0] for r in psm_drive.listings()] == [f"/drive/folders/{PSM_FOLDER_ID}", f"/drive/folders/{run_dir}"]
    assert [r[0] for r in psm_drive.downloads()] == [f"/download?id={file_id}&export=download"]
    # the checkpoint is deleted after import; provenance and the lock record what was resolved
    assert not (cache_dir() / "downloads" / f"{NAME}.ckpt").exists()
    assert model.config.source["source_id"] == f"drive:{file_id}"
    record = lockfile.locked(NAME)
    assert record["source_id"] == f"drive:{file_id}" and record["size"] == len(psm_ckpt_bytes)
    assert record["sha256"] == hashlib.sha256(psm_ckpt_bytes).hexdigest()
    assert (model_dir() / "registry.lock.json").is_file()
    assert run(["models", "verify", NAME]) == 0


def test_folder_is_listed_recursively_through_nested_sub_folders(drive_server: DriveServer) -> None:
    drive_server.add_file(PSM_FOLDER_ID, "a/b/c/deep.ckpt", b"1")
    drive_server.add_file(PSM_FOLDER_ID, "a/top.ckpt", b"2")
    drive_server.add_file(PSM_FOLDER_ID, "root.txt", b"3")
    tree = list_tree(make_session(), PSM_FOLDER_ID)
    assert sorted(tree) == ["a/b/c/deep.ckpt", "a/top.ckpt", "root.txt"]
    assert not drive_server.downloads(), "listing downloads nothing"


def test_embedded_folder_view_layout_is_read_too(psm_drive: DriveServer) -> None:
    psm_drive.layout = "embedded"
    pull_model(NAME)
    assert any(r[0].startswith("/embeddedfolderview") for r in psm_drive.requests)
    assert (model_dir() / NAME / "model.safetensors").is_file()


def test_large_file_goes_through_the_virus_scan_confirmation(psm_drive: DriveServer, capsys) -> None:
    file_id = _file_id(psm_drive, PATH.split("/")[-1])
    psm_drive.large.add(file_id)
    code, err = _cli(["models", "pull", NAME, "-q", "--keep-checkpoint"], capsys)
    assert code == 0, err
    first, confirmed = psm_drive.downloads()
    assert first[2] == 200 and "confirm=t" not in first[0]  # the warning page
    assert "confirm=t" in confirmed[0] and "uuid=" in confirmed[0] and confirmed[2] == 200
    assert (cache_dir() / "downloads" / f"{NAME}.ckpt").is_file()  # --keep-checkpoint


def test_quota_page_is_one_line_and_cookies_get_past_it(psm_drive: DriveServer, capsys, tmp_path: Path) -> None:
    file_id = _file_id(psm_drive, PATH.split("/")[-1])
    psm_drive.quota.add(file_id)
    code, err = _cli(["models", "pull", NAME], capsys)
    _assert_one_line_failure(code, err)
    assert "too many users" in err and "--cookies FILE" in err
    cookies = tmp_path / "cookies.txt"
    host = psm_drive.url.split("//")[1].split(":")[0]
    cookies.write_text("# Netscape HTTP Cookie File\n"
                       f"{host}\tFALSE\t/\tFALSE\t0\tSID\tsigned-in\n")
    code, err = _cli(["models", "pull", NAME, "--cookies", str(cookies), "-q"], capsys)
    assert code == 0, err
    code, err = _cli(["models", "pull", NAME, "--cookies", str(tmp_path / "none.txt")], capsys)
    assert code == 2 and "cookie file" in err and err.count("\n") == 1


def test_html_body_instead_of_the_checkpoint_is_refused(psm_drive: DriveServer, capsys) -> None:
    psm_drive.html_body.add(_file_id(psm_drive, PATH.split("/")[-1]))
    code, err = _cli(["models", "pull", NAME], capsys)
    _assert_one_line_failure(code, err)
    assert "web page instead of the checkpoint" in err
    assert not list((cache_dir() / "downloads").glob("*")), "nothing of the page is kept"


def test_changed_folder_layout_is_one_line(psm_drive: DriveServer, capsys) -> None:
    psm_drive.layout = "changed"
    code, err = _cli(["models", "pull", NAME], capsys)
    _assert_one_line_failure(code, err)
    assert "layout" in err and psm_drive.url + "/drive/folders/" + PSM_FOLDER_ID in err and PATH in err
    assert not psm_drive.downloads()


def test_oversized_folder_page_is_cut_off(psm_drive: DriveServer, capsys) -> None:
    psm_drive.page_padding = 5 << 20
    code, err = _cli(["models", "pull", NAME], capsys)
    _assert_one_line_failure(code, err)
    assert "oversized or endless page" in err


def test_file_missing_from_the_folder_is_one_line(drive_server: DriveServer, capsys, clap_files,
                                                  monkeypatch) -> None:
    drive_server.add_file(PSM_FOLDER_ID, "z2tpbd70/epoch=1-other.ckpt", b"x")
    code, err = _cli(["models", "pull", NAME], capsys)
    _assert_one_line_failure(code, err)
    assert f"{PATH} is not in the Drive folder: z2tpbd70/ holds epoch=1-other.ckpt" in err


def test_dropped_connection_resumes_with_range_in_the_same_and_the_next_run(psm_drive: DriveServer, capsys,
                                                                             psm_ckpt_bytes: bytes,
                                                                             monkeypatch) -> None:
    # a truncated body inside one run: retried from where it stopped
    psm_drive.cut_after, psm_drive.cut_next = 100_000, 1
    assert _cli(["models", "pull", NAME, "-q"], capsys)[0] == 0
    (_, r1, s1), (_, r2, s2) = psm_drive.downloads()
    assert (r1, s1, s2) == (None, 200, 206) and 0 < int(r2.removeprefix("bytes=").rstrip("-")) <= 100_000
    # a run that gives up (no retries left) fails in one line and keeps the .part; the next resumes
    run(["models", "remove", NAME, "-q"])
    (model_dir() / "registry.lock.json").unlink()
    psm_drive.requests.clear()
    monkeypatch.setenv("SOUNDMAP_DOWNLOAD_RETRIES", "0")
    psm_drive.cut_after, psm_drive.cut_next = 150_000, 1
    code, err = _cli(["models", "pull", NAME], capsys)
    _assert_one_line_failure(code, err)
    assert "run the command again to resume" in err
    part = cache_dir() / "downloads" / f"{NAME}.ckpt.part"
    kept = part.stat().st_size
    assert 0 < kept <= 150_000
    assert _cli(["models", "pull", NAME, "-q"], capsys)[0] == 0
    assert psm_drive.downloads()[-1][1:] == (f"bytes={kept}-", 206)
    assert lockfile.locked(NAME)["sha256"] == hashlib.sha256(psm_ckpt_bytes).hexdigest()


def test_a_changed_byte_on_the_server_is_refused_by_the_lock(psm_drive: DriveServer, psm_ckpt_bytes: bytes,
                                                            capsys) -> None:
    assert _cli(["models", "pull", NAME, "-q"], capsys)[0] == 0
    file_id = _file_id(psm_drive, PATH.split("/")[-1])
    changed = bytearray(psm_ckpt_bytes)
    changed[len(changed) // 2] ^= 0xFF
    psm_drive.files[file_id] = (PATH.split("/")[-1], bytes(changed))
    run(["models", "remove", NAME, "-q"])
    code, err = _cli(["models", "pull", NAME], capsys)
    assert code == 2 and err.count("\n") == 1 and "sha256" in err and "registry.lock.json" in err
    assert not (model_dir() / NAME).exists() and not list((cache_dir() / "downloads").glob("*"))
    # a larger file is cut off at the recorded size, never downloaded in full
    psm_drive.files[file_id] = (PATH.split("/")[-1], psm_ckpt_bytes + b"\0" * 500_000)
    code, err = _cli(["models", "pull", NAME], capsys)
    assert code == 2 and "bytes" in err and err.count("\n") == 1
    assert not list((cache_dir() / "downloads").glob("*"))


def test_lock_from_another_machine_and_models_verify(psm_drive: DriveServer, psm_ckpt_bytes: bytes, capsys) -> None:
    lockfile.record(NAME, source_id="drive:elsewhere", size=len(psm_ckpt_bytes), sha256="0" * 64)
    code, err = _cli(["models", "pull", NAME], capsys)
    assert code == 2 and "as recorded on first download" in err
    lockfile.record(NAME, source_id="drive:elsewhere", size=len(psm_ckpt_bytes),
                    sha256=hashlib.sha256(psm_ckpt_bytes).hexdigest())
    assert _cli(["models", "pull", NAME, "-q"], capsys)[0] == 0  # same bytes, other id: accepted
    assert lockfile.locked(NAME)["source_id"] == "drive:elsewhere"
    code, _ = _cli(["models", "verify", NAME], capsys)
    assert code == 0
    weights = model_dir() / NAME / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    code, err = _cli(["models", "verify", NAME], capsys)
    assert code == 2 and "weights of " + NAME + " changed" in err


def test_registry_sha256_wins_over_the_lock(psm_drive: DriveServer, psm_ckpt_bytes: bytes, tmp_path: Path,
                                            monkeypatch, capsys) -> None:
    registry = yaml.safe_load((Path(__file__).parents[2] / "soundmap/data/models.yaml").read_text())
    registry["models"][NAME]["sha256"] = hashlib.sha256(psm_ckpt_bytes).hexdigest()
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(registry))
    monkeypatch.setenv("SOUNDMAP_REGISTRY", str(path))
    lockfile.record(NAME, source_id="drive:old", size=1, sha256="1" * 64)  # stale record
    assert _cli(["models", "pull", NAME, "-q"], capsys)[0] == 0
    assert lockfile.locked(NAME)["sha256"] == registry["models"][NAME]["sha256"]
    registry["models"][NAME]["sha256"] = "f" * 64
    path.write_text(yaml.safe_dump(registry))
    code, err = _cli(["models", "pull", NAME], capsys)
    assert code == 2 and "the registry says" in err


def test_drive_refusal_offers_the_hugging_face_model(psm_drive: DriveServer, capsys) -> None:
    """The Sat2Sound entries of the packaged registry are the alternative: same imagery family and
    metadata first."""
    psm_drive.quota.add(_file_id(psm_drive, PATH.split("/")[-1]))
    code, err = _cli(["models", "pull", NAME], capsys)
    assert code == 2 and err.count("\n") == 1 and "--model sat2sound-sentinel-meta " in err
    assert run(["models", "list", "--available"]) == 0
    listing = capsys.readouterr().out
    assert f"Drive folder {PSM_FOLDER_ID}" in listing and "HF MVRL/sat2sound" in listing
    assert "never redistributed" in listing and "MIT" in listing


def test_hf_alternative_matches_family_then_metadata() -> None:
    registry = load_registry()
    nometa = registry.get("psm-geosound-bing-nometa")
    assert hf_alternatives(registry, nometa)[0] == "sat2sound-bing-nometa"
    assert hf_alternatives(registry, registry.get("psm-geosound-sentinel-meta"))[0] == "sat2sound-sentinel-meta"


def test_offline_makes_no_request_and_names_the_file(psm_drive: DriveServer, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SOUNDMAP_OFFLINE", "1")
    code, err = _cli(["models", "pull", NAME], capsys)
    assert code == 2 and err.count("\n") == 1 and "SOUNDMAP_OFFLINE=1" in err and PATH in err
    assert psm_drive.requests == []
    code, err = _cli(["models", "pull", "--all"], capsys)
    assert code == 2 and psm_drive.requests == []


def test_pull_all_pulls_every_entry_and_reports_the_missing(psm_drive: DriveServer, psm_ckpt_bytes: bytes,
                                                            tmp_path: Path, monkeypatch, capsys) -> None:
    registry = yaml.safe_load((Path(__file__).parents[2] / "soundmap/data/models.yaml").read_text())
    keep = {NAME: registry["models"][NAME], "psm-geosound-sentinel-nometa": registry["models"]["psm-geosound-sentinel-nometa"]}
    registry["models"] = keep
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(registry))
    monkeypatch.setenv("SOUNDMAP_REGISTRY", str(path))
    code, err = _cli(["models", "pull", "--all", "-q"], capsys)
    assert code == 2 and "psm-geosound-sentinel-nometa" in err and err.count("\n") == 1  # decoy is no checkpoint
    assert {m.name for m in installed_models()} == {NAME}


def test_non_http_urls_are_refused_in_one_line(tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "x.ckpt"
    ckpt.write_bytes(b"x")
    for url in (ckpt.as_uri(), "ftp://example.invalid/x.ckpt"):
        code, err = _cli(["models", "pull", "--url", url], capsys)
        assert code == 2 and err.count("\n") == 1 and "only http:// and https://" in err
        code, err = _cli(["models", "pull", "mine", "--url", url], capsys)
        assert code == 2 and "soundmap models import FILE" in err
    with pytest.raises(DownloadError, match="only http"):
        pull_model("mine", url="file:///etc/passwd")


def test_lock_file_is_json_with_one_record_per_model(tmp_path: Path) -> None:
    lockfile.record_or_verify("a", source_id="drive:1", size=3, sha256="AB" * 32, extra={"weights_sha256": "w"})
    lockfile.record_or_verify("a", source_id="drive:2", size=3, sha256="ab" * 32)  # same content: fine
    with pytest.raises(ModelError, match="sha256 of a is"):
        lockfile.record_or_verify("a", source_id="drive:1", size=3, sha256="cd" * 32)
    with pytest.raises(ModelError, match="is 4 bytes, not 3"):
        lockfile.record_or_verify("a", source_id="drive:1", size=4, sha256="ab" * 32)
    data = json.loads(lockfile.lock_path().read_text())
    assert data["version"] == 1 and data["models"]["a"]["source_id"] == "drive:1"
    assert data["models"]["a"]["weights_sha256"] == "w" and lockfile.read_lock()["models"].keys() == {"a"}
    assert lockfile.locked("b") is None


def test_progress_bar_shows_bytes_and_rate_and_quiet_silences_it(psm_drive: DriveServer, monkeypatch,
                                                                 capsys) -> None:
    monkeypatch.delenv("SOUNDMAP_QUIET", raising=False)
    code, err = _cli(["models", "pull", NAME], capsys)
    assert code == 0 and f"{NAME}:" in err and "B/s" in err and "M" in err  # name, size, rate
    run(["models", "remove", NAME, "-q"])
    capsys.readouterr()
    code, err = _cli(["models", "pull", NAME, "--quiet"], capsys)
    assert code == 0 and err == ""


def _info_provenance(capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert run(["models", "info", NAME]) == 0
    return next(line for line in capsys.readouterr().out.splitlines() if line.startswith("provenance:"))


def test_another_url_under_a_released_name_needs_force(psm_drive: DriveServer, file_server, tmp_path: Path,
                                                        capsys) -> None:
    """After the official pull recorded its checksum, a different file from another URL is refused
    under that name; --force installs it and `models info` says UNVERIFIED."""
    pull_model(NAME)
    assert "verified: the checkpoint recorded at the first download" in _info_provenance(capsys)
    other = write_author_checkpoint(build_tiny_model("psm", seed=7), tmp_path / "other.ckpt")
    file_server.files["/other.ckpt"] = other.read_bytes()
    url = file_server.url_for("other.ckpt")
    code, err = _cli(["models", "pull", NAME, "--url", url], capsys)
    assert code == 2 and err.count("\n") == 1 and "--force" in err and "not the checkpoint recorded" in err
    assert "verified" in _info_provenance(capsys) and "UNVERIFIED" not in _info_provenance(capsys)
    assert run(["models", "pull", NAME, "--url", url, "--force", "-q"]) == 0
    line = _info_provenance(capsys)
    assert url in line and "UNVERIFIED" in line and "--force" in line


def test_a_checkpoint_of_another_variant_is_refused_without_force(file_server, tmp_path: Path, capsys) -> None:
    geoclap = write_author_checkpoint(build_tiny_model("geoclap", seed=3), tmp_path / "g.ckpt")
    file_server.files["/g.ckpt"] = geoclap.read_bytes()
    url = file_server.url_for("g.ckpt")
    code, err = _cli(["models", "pull", NAME, "--url", url], capsys)
    assert code == 2 and err.count("\n") == 1 and "the registry says" in err
    assert NAME not in {m.name for m in installed_models()}
    assert run(["models", "pull", NAME, "--url", url, "--force", "-q"]) == 0
    assert "UNVERIFIED" in _info_provenance(capsys)
