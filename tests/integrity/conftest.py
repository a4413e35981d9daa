"""Fixtures of the integrity tests: the tiny installed model of the embed tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.embed_workspace import tiny_model, tiny_model_builds  # noqa: F401


@pytest.fixture
def tiles_yaml(tile_server, tmp_path: Path) -> Path:
    """A tiles.yaml with the loopback server's test sources."""
    return tile_server.write_tiles_yaml(tmp_path / "tiles.yaml")
