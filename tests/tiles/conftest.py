"""Fixtures of the tiles area: a tiles.yaml pointing at the loopback server,
a temporary tile cache, and a retry policy that does not make tests wait."""

from __future__ import annotations

from pathlib import Path

import pytest

from soundmap.tiles.cache import TileCache
from soundmap.tiles.fetch import RetryPolicy
from tests.fixtures.tileserver import TileServer


@pytest.fixture
def tiles_yaml(tile_server: TileServer, tmp_path: Path) -> Path:
    """A tiles.yaml with test-xyz / test-zyx / test-quadkey / test-jpeg sources on the loopback server."""
    return tile_server.write_tiles_yaml(tmp_path / "tiles.yaml")


@pytest.fixture
def cache(tmp_path: Path) -> TileCache:
    """An empty tile cache in a temporary directory."""
    return TileCache(tmp_path / "cache" / "tiles.sqlite")


@pytest.fixture
def fast_policy() -> RetryPolicy:
    """Three retries with millisecond backoff: same code path, no waiting."""
    return RetryPolicy(retries=3, backoff_s=0.001, max_backoff_s=0.01, timeout_s=5.0, max_retry_after_s=0.05)
