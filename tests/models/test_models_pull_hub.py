"""The Hugging Face side of ``models pull``: the CLAP files on the first pull, and the ``hf``
source kind, against the loopback Hub (HF_ENDPOINT) — real huggingface_hub calls."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from soundmap.cli.main import run
from soundmap.hub import hub_settings
from soundmap.models import lockfile
from soundmap.models.registry import pull_model
from soundmap.paths import model_dir
from soundmap.preprocess.text import CLAP_FILES, CLAP_REPO_ID, TextTokenizer
from tests.fixtures.clap_files import write_clap_files
from tests.fixtures.drive_server import PSM_FOLDER_ID, DriveServer, drive_server  # noqa: F401
from tests.fixtures.hf_server import HubServer, hf_server  # noqa: F401
from tests.fixtures.tiny_models import build_tiny_model, write_author_checkpoint

NAME = "psm-geosound-sentinel-meta"
PATH = "z2tpbd70/epoch=0-I2S_Recall=0.666.ckpt"


@pytest.fixture(scope="module")
def psm_ckpt(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return write_author_checkpoint(build_tiny_model("psm"), tmp_path_factory.mktemp("c") / "p.ckpt").read_bytes()


@pytest.fixture()
def clap_hub(hf_server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HubServer:
    """laion/clap-htsat-fused on the loopback Hub with its tokenizer files (and a weights file
    that must never be fetched)."""
    monkeypatch.delenv("SOUNDMAP_CLAP_DIR", raising=False)
    hf_server.add_dir(CLAP_REPO_ID, write_clap_files(tmp_path / "clap-src"))
    hf_server.add_file(CLAP_REPO_ID, "model.safetensors", b"\0" * 4096)
    return hf_server


def test_first_pull_fetches_the_clap_files_into_the_hf_cache_once(clap_hub: HubServer, drive_server: DriveServer,
                                                                  psm_ckpt: bytes, capsys) -> None:
    drive_server.add_file(PSM_FOLDER_ID, PATH, psm_ckpt)
    assert run(["models", "pull", NAME, "-q"]) == 0, capsys.readouterr().err
    fetched = sorted(r.path.rsplit("/", 1)[-1] for r in clap_hub.downloads())
    assert fetched == sorted(CLAP_FILES), "the small files only, never the weights"
    snapshot = hub_settings().cache_dir / "models--laion--clap-htsat-fused" / "snapshots" / clap_hub.commit(CLAP_REPO_ID)
    assert all((snapshot / name).is_file() for name in CLAP_FILES)
    assert TextTokenizer().directory == snapshot  # the text branch finds them with no setting
    # a second pull asks the Hub nothing
    requests = len(clap_hub.requests)
    assert run(["models", "remove", NAME, "-q"]) == 0 and run(["models", "pull", NAME, "-q"]) == 0
    assert len(clap_hub.requests) == requests


def test_hf_hub_offline_makes_no_request_and_names_the_missing_file(clap_hub: HubServer, drive_server: DriveServer,
                                                                    psm_ckpt: bytes, monkeypatch, capsys) -> None:
    drive_server.add_file(PSM_FOLDER_ID, PATH, psm_ckpt)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("SOUNDMAP_QUIET", raising=False)
    assert run(["models", "pull", NAME]) == 0  # the checkpoint came from Drive; the Hub was not asked
    err = capsys.readouterr().err
    assert "not fetching the CLAP files vocab.json" in err and "soundmap models clap-files" in err
    assert clap_hub.requests == []
    code = run(["models", "clap-files"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "vocab.json" in err and "offline" in err
    assert clap_hub.requests == []


def test_hf_source_kind_installs_from_the_hub_cache_and_locks_the_commit(hf_server: HubServer, psm_ckpt: bytes,
                                                                        clap_files: Path, tmp_path: Path,
                                                                        monkeypatch, capsys) -> None:
    monkeypatch.setenv("SOUNDMAP_CLAP_DIR", str(clap_files))
    hf_server.add_file("someone/psm-mirror", "ckpt/psm.ckpt", psm_ckpt)
    registry = {"models": {"psm-mirror": {
        "variant": "psm", "family": "sentinel", "metadata": "all", "dataset": "GeoSound", "experiment": "e",
        "source": {"kind": "hf", "repo": "someone/psm-mirror", "path": "ckpt/psm.ckpt", "revision": "main"},
        "licence": "MIT"}}}
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(registry))
    monkeypatch.setenv("SOUNDMAP_REGISTRY", str(tmp_path / "models.yaml"))
    path = pull_model("psm-mirror")
    assert (path / "model.safetensors").is_file() and path == model_dir() / "psm-mirror"
    record = lockfile.locked("psm-mirror")
    assert record["source_id"] == f"hf:someone/psm-mirror@{hf_server.commit('someone/psm-mirror')}:ckpt/psm.ckpt"
    assert record["sha256"] == hashlib.sha256(psm_ckpt).hexdigest()
    cached = hub_settings().cache_dir / "models--someone--psm-mirror"
    assert any(cached.rglob("psm.ckpt")), "the hub cache keeps its file"
    assert run(["models", "verify", "psm-mirror"]) == 0
