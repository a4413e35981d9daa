"""Shared fixtures. Area-specific fixtures live in tests/<area>/conftest.py; reusable builders
(tile server, tiny models, synthetic audio and rasters) in tests/fixtures/ and are exposed here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fixtures.tileserver import tile_server  # noqa: F401  (loopback XYZ/quadkey server)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own cache and workspace roots, so no test reads a user's real cache."""
    root = tmp_path_factory.mktemp("soundmap-cache")
    monkeypatch.setenv("SOUNDMAP_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.delenv("SOUNDMAP_WORKSPACE", raising=False)
    monkeypatch.delenv("SOUNDMAP_SCHEDULER", raising=False)
    # Google Drive: a closed loopback port unless a test starts tests/fixtures/drive_server.py
    monkeypatch.setenv("SOUNDMAP_DRIVE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("SOUNDMAP_DRIVE_DOWNLOAD_URL", "http://127.0.0.1:9")
    os.environ.setdefault("SOUNDMAP_QUIET", "1")


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private $XDG_CONFIG_HOME so that a developer's own tiles.yaml never changes a test."""
    root = tmp_path_factory.mktemp("xdg-config")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(root))
    return root


# CLAP engineer: synthetic audio files and tiny CLAP tokenizer files.
from tests.fixtures.audio import audio_clips, write_audio  # noqa: E402,F401
from tests.fixtures.clap_files import clap_files  # noqa: E402,F401

# ECOLOGY engineer: static file server with HTTP Range support (WorldCover COG windows).
from tests.fixtures.rangeserver import range_server  # noqa: E402,F401

# MODELS engineer: tiny PSM / GeoCLAP models and authors'-layout checkpoints.
from tests.fixtures.tiny_models import (  # noqa: E402,F401
    author_checkpoint_factory,
    installed_tiny_model,
    tiny_geoclap_model,
    tiny_model_factory,
    tiny_psm_model,
)

# QUERY engineer: an embedded workspace (loopback tiles → tiny PSM) and installed tiny models.
from tests.fixtures.query_workspace import (  # noqa: E402,F401
    _built_query_workspace,
    _tiny_psm_dir,
    installed_models,
    query_env,
    tiny_psm,
)
