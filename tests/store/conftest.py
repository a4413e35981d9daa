"""Fixtures of the store area: a fetched workspace on the loopback tile server and a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.embed_workspace import (fetch_test_workspace, other_tiny_model,  # noqa: F401
                                            tiny_model, tiny_model_builds)
from tests.fixtures.tileserver import TileServer


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A private $XDG_CONFIG_HOME so that a developer's own tiles.yaml never changes a test."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg-config")))


@pytest.fixture
def fetched_workspace(tile_server: TileServer, tmp_path: Path) -> Path:
    """A workspace whose tiles (zoom 1, 2 × 4 cells) were all fetched from the loopback server."""
    return fetch_test_workspace(tile_server, tmp_path)
