"""soundmap.hub against the loopback Hub (tests/fixtures/hf_server.py): real huggingface_hub calls."""

from __future__ import annotations

import hashlib

import pytest

from soundmap.errors import DownloadError, ModelError
from soundmap.hub import hub_file, hub_settings, hub_snapshot
from tests.fixtures.hf_server import hf_server  # noqa: F401  (fixture)

REPO = "someone/tiny-repo"


def test_settings_are_read_at_call_time(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    settings = hub_settings()
    assert settings.endpoint == "http://127.0.0.1:9"
    assert settings.cache_dir == tmp_path / "home" / "hub"
    assert not settings.offline
    monkeypatch.setenv("SOUNDMAP_OFFLINE", "1")
    assert hub_settings().offline


def test_file_lands_in_hf_cache_and_second_call_makes_no_request(hf_server):
    hf_server.add_file(REPO, "config.json", b'{"a": 1}')
    path = hub_file(REPO, "config.json")
    assert path.read_bytes() == b'{"a": 1}'
    assert str(hub_settings().cache_dir) in str(path.resolve()) or hub_settings().cache_dir in path.parents
    made = len(hf_server.requests)
    assert made >= 1 and hf_server.downloads("config.json")
    assert hub_file(REPO, "config.json") == path
    assert len(hf_server.requests) == made


def test_offline_makes_no_request_and_names_the_file(hf_server, monkeypatch):
    hf_server.add_file(REPO, "weights.bin", b"x" * 10)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="weights.bin.*offline"):
        hub_file(REPO, "weights.bin")
    assert hf_server.requests == []


def test_missing_file_and_repo_are_one_line_errors(hf_server):
    hf_server.add_file(REPO, "a.txt", b"a")
    with pytest.raises(ModelError, match="b.txt does not exist"):
        hub_file(REPO, "b.txt")
    with pytest.raises(ModelError, match="does not exist"):
        hub_file("nobody/nothing", "a.txt")


def test_dropped_connection_is_reported_and_resumes(hf_server):
    body = bytes(range(256)) * 64
    hf_server.add_file(REPO, "big.bin", body)
    hf_server.cut_after["big.bin"] = 1000
    with pytest.raises(DownloadError, match="big.bin"):
        hub_file(REPO, "big.bin")
    del hf_server.cut_after["big.bin"]
    path = hub_file(REPO, "big.bin")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(body).hexdigest()


def test_snapshot_with_patterns_then_cached(hf_server):
    hf_server.add_file(REPO, "config.json", b"{}")
    hf_server.add_file(REPO, "tokenizer.json", b"{}")
    hf_server.add_file(REPO, "model.safetensors", b"w" * 100)
    folder = hub_snapshot(REPO, allow_patterns=["*.json"])
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "tokenizer.json"]
    made = len(hf_server.requests)
    assert hub_snapshot(REPO, allow_patterns=["*.json"]) == folder
    assert len(hf_server.requests) == made


def test_dataset_repository(hf_server):
    hf_server.add_file("org/data", "test/part-0.parquet", b"PAR1", repo_type="dataset")
    path = hub_file("org/data", "test/part-0.parquet", repo_type="dataset")
    assert path.read_bytes() == b"PAR1"
