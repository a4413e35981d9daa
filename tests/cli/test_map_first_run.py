"""The README's first command on a fresh machine: ``soundmap map --yes`` from an EMPTY cache, with
the model pulled from the (loopback) authors' Drive folder and the CLAP files from the (loopback)
Hugging Face Hub, then fetch → embed → query in the same run. No manual step, no monkeypatched
download: every outside service is a real server on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest
import rasterio

from soundmap.cli.main import run
from soundmap.models import lockfile
from soundmap.preprocess.text import CLAP_REPO_ID
from tests.fixtures.clap_files import write_clap_files
from tests.fixtures.drive_server import PSM_FOLDER_ID, DriveServer, drive_server  # noqa: F401
from tests.fixtures.hf_server import HubServer, hf_server  # noqa: F401
from tests.fixtures.query_workspace import QUERY_BBOX
from tests.fixtures.tileserver import TileServer
from tests.fixtures.tiny_models import build_tiny_model, write_author_checkpoint

NAME = "psm-geosound-sentinel-meta"


@pytest.fixture()
def fresh_machine(drive_server: DriveServer, hf_server: HubServer, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> DriveServer:
    """Empty soundmap and HF caches; the authors' folder holds the (tiny) PSM checkpoint; the Hub
    holds CLAP's tokenizer files."""
    monkeypatch.delenv("SOUNDMAP_CLAP_DIR", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    ckpt = write_author_checkpoint(build_tiny_model("psm"), tmp_path / "src" / "psm.ckpt")
    drive_server.add_file(PSM_FOLDER_ID, "z2tpbd70/epoch=0-I2S_Recall=0.666.ckpt", ckpt.read_bytes())
    hf_server.add_dir(CLAP_REPO_ID, write_clap_files(tmp_path / "clap-src"))
    return drive_server


def test_map_yes_from_an_empty_cache_pulls_and_makes_a_cog(fresh_machine: DriveServer, hf_server: HubServer,
                                                           tile_server: TileServer, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "london.tif"
    code = run(["map", "--bbox", QUERY_BBOX, "--text", "sound of birds", "--hour", "7", "--month", "5",
                "--out", str(out), "--png", "--stride", "5000", "--source", tile_server.xyz_template,
                "--yes", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.split() == [str(out), str(tmp_path / "london.png")]
    with rasterio.open(out) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and ds.tags()["model"] == NAME
    assert fresh_machine.downloads() and hf_server.downloads("vocab.json") and tile_server.requests
    assert lockfile.locked(NAME)["source_id"].startswith("drive:")


def test_map_asks_once_on_a_terminal_and_explains_without_one(fresh_machine: DriveServer, tile_server: TileServer,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    questions: list[str] = []
    monkeypatch.setattr("soundmap.cli.query._confirm", lambda q: questions.append(q) or False)
    args = ["map", "--bbox", QUERY_BBOX, "--text", "birds", "--out", str(tmp_path / "m.tif"), "--stride", "5000",
            "--source", tile_server.xyz_template, "--quiet"]
    assert run(args) == 2
    err = capsys.readouterr().err
    assert questions == [f"Download {NAME} from the authors' Google Drive folder?"]
    assert err.count("\n") == 1 and f"soundmap models pull {NAME}" in err and "--yes" in err
    assert fresh_machine.requests == [] and tile_server.requests == []
    # answering yes pulls, then the map is made in the same run
    monkeypatch.setattr("soundmap.cli.query._confirm", lambda q: questions.append(q) or True)
    assert run(args) == 0, capsys.readouterr().err
    assert len(questions) == 2 and (tmp_path / "m.tif").is_file()
