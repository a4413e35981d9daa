"""Sat2Sound downloads through HF_ENDPOINT pointed at the loopback Hub (tests/fixtures/hf_server.py):
the checkpoint pull (first, cached, offline, changed upstream) and FlanT5 fetched on first text query."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

import soundmap
from soundmap.errors import ModelError
from soundmap.models.registry import pull_model
from soundmap.models.sat2sound.checkpoint import export_checkpoint
from tests.fixtures.hf_server import hf_server  # noqa: F401  (fixture)
from tests.fixtures.sat2sound import build_tiny_sat2sound, save_tiny_t5

REPO = "MVRL/sat2sound"
FILE = "sat2sound/sentinel_withmeta.ckpt"


def _ckpt_bytes(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    torch.save(export_checkpoint(build_tiny_sat2sound(seed=seed)), buffer)
    return buffer.getvalue()


def test_pull_records_then_reuses_the_cache_and_refuses_a_changed_file(hf_server, tmp_path, monkeypatch) -> None:
    from soundmap.cli.main import run
    from soundmap.paths import model_dir

    hf_server.add_file(REPO, FILE, _ckpt_bytes())
    assert run(["models", "pull", "sat2sound-sentinel-meta", "--quiet"]) == 0  # the CLI, no browser step
    path = model_dir() / "sat2sound-sentinel-meta"
    assert hf_server.downloads(FILE), "the checkpoint came from the loopback Hub"
    model = soundmap.load_model("sat2sound-sentinel-meta", "cpu")
    assert model.variant == "sat2sound" and model.config.source["registry_name"] == "sat2sound-sentinel-meta"
    assert hf_server.commit(REPO) in model.config.source["source_id"] and model.config.source["licence"] == "MIT"
    lock = (Path(path).parent / "registry.lock.json").read_text()
    assert hf_server.commit(REPO) in lock
    # second pull: from the HF cache, no request at all
    hf_server.requests.clear()
    pull_model("sat2sound-sentinel-meta")
    assert hf_server.requests == []
    # offline: still no request, and it works from the cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pull_model("sat2sound-sentinel-meta")
    assert hf_server.requests == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    # the file changes upstream and the HF cache is gone: the new bytes do not match the record
    hf_server.add_file(REPO, FILE, _ckpt_bytes(seed=1))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "fresh-hf"))
    with pytest.raises(ModelError, match="sha256 of sat2sound-sentinel-meta .* as recorded on first download"):
        pull_model("sat2sound-sentinel-meta")


def test_offline_pull_without_cache_makes_no_request(hf_server, monkeypatch) -> None:
    hf_server.add_file(REPO, FILE, _ckpt_bytes())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="sentinel_withmeta.ckpt.*offline"):
        pull_model("sat2sound-sentinel-meta")
    assert hf_server.requests == []


def test_pulled_checkpoint_must_match_the_registry_entry(hf_server) -> None:
    buffer = io.BytesIO()
    torch.save(export_checkpoint(build_tiny_sat2sound(metadata=())), buffer)  # a nometa model
    hf_server.add_file(REPO, FILE, buffer.getvalue())
    with pytest.raises(ModelError, match="registry says"):
        pull_model("sat2sound-sentinel-meta")


def test_flan_t5_is_fetched_on_first_text_query_and_only_the_encoder_is_kept(hf_server, tmp_path) -> None:
    from soundmap.hub import hub_settings
    from soundmap.paths import cache_dir

    hf_server.add_dir("google/flan-t5-large", save_tiny_t5(tmp_path / "t5"))
    model = build_tiny_sat2sound(metadata=())
    text = model.encode_text(["birds singing"])
    assert hf_server.downloads("model.safetensors")
    kept = cache_dir() / "text-encoders" / "google--flan-t5-large"
    assert (kept / "config.json").is_file() and (kept / "model.safetensors").is_file()
    assert not any(hub_settings().cache_dir.glob("models--google--flan-t5-large/snapshots/*/model.safetensors"))
    hf_server.requests.clear()
    again = build_tiny_sat2sound(metadata=())
    assert torch.equal(again.encode_text(["birds singing"]).mu, text.mu)
    assert hf_server.requests == []


def test_registry_has_the_six_sat2sound_checkpoints() -> None:
    from soundmap.models.registry import load_registry

    entries = {e.name: e for e in load_registry().entries.values() if e.variant == "sat2sound"}
    assert sorted(entries) == sorted(f"sat2sound-{f}-{m}" for f in ("sentinel", "bing", "soundingearth")
                                     for m in ("meta", "nometa"))
    for entry in entries.values():
        assert entry.licence == "MIT" and entry.source["kind"] == "hf" and entry.source["repo"] == REPO
        assert entry.source["revision"] == "main" and entry.source["path"].startswith("sat2sound/")
    assert entries["sat2sound-bing-meta"].source["path"] == "sat2sound/bingmap_withmeta.ckpt"
    assert entries["sat2sound-soundingearth-meta"].metadata == ("caption_source", "latlon", "month", "hour")
    assert entries["sat2sound-soundingearth-nometa"].family == "googleEarth"
