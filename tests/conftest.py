"""Shared fixtures. Area-specific fixtures live in tests/<area>/conftest.py; reusable builders
(tile server, tiny models, synthetic audio and rasters) in tests/fixtures/ and are exposed here."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own cache and workspace roots, so no test reads a user's real cache."""
    root = tmp_path_factory.mktemp("soundmap-cache")
    monkeypatch.setenv("SOUNDMAP_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.delenv("SOUNDMAP_WORKSPACE", raising=False)
    monkeypatch.delenv("SOUNDMAP_SCHEDULER", raising=False)
    os.environ.setdefault("SOUNDMAP_QUIET", "1")
