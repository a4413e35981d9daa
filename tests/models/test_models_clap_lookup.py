"""CLAP tokenizer files are found under the --cache-dir a command was given."""

from __future__ import annotations

import shutil
from pathlib import Path

import soundmap
from soundmap.paths import model_dir


def test_load_model_finds_clap_files_under_the_given_cache_dir(tiny_psm_model, clap_files: Path, tmp_path: Path) -> None:
    root = tmp_path / "elsewhere"
    tiny_psm_model.save(model_dir(root) / "tiny")
    shutil.copytree(clap_files, root / "clap")
    model = soundmap.load_model("tiny", device="cpu", cache_dir=root)
    assert model.clap_files == root / "clap"
    assert model.encode_text(["birds singing"]).mu.shape == (1, tiny_psm_model.config.fc_dim)


def test_without_a_cache_dir_the_default_lookup_stays(tiny_psm_model, tmp_path: Path) -> None:
    tiny_psm_model.save(tmp_path / "m")
    assert soundmap.load_model(tmp_path / "m", device="cpu").clap_files is None
