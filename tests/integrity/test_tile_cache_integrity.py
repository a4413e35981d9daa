"""The tile cache damaged on purpose: a malformed SQLite file is one line naming it and how to
rebuild it; a cached tile that no longer decodes is forgotten at embed time and fetched again."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from soundmap.cli.main import run
from soundmap.errors import CacheError
from soundmap.tiles.cache import TileCache
from soundmap.pipeline.workspace import Workspace
from tests.fixtures.embed_workspace import fetch_test_workspace
from tests.fixtures.tileserver import TileServer


def _malformed_cache(path: Path) -> TileCache:
    cache = TileCache(path)
    cache.put_many("s", [((14, x, y), b"x" * 3000) for x in range(30) for y in range(30)])
    conn = cache._connect()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    cache.close()
    data = bytearray(path.read_bytes())
    for offset in range(4096 * 3, len(data) - 4096, 4096):   # garbage in every page but the header
        data[offset + 8:offset + 200] = b"\xff" * 192
    path.write_bytes(bytes(data))
    return TileCache(path)


def test_a_malformed_sqlite_cache_names_the_file_and_the_rebuild(tmp_path: Path) -> None:
    cache = _malformed_cache(tmp_path / "tiles.sqlite")
    with pytest.raises(CacheError) as err:
        [cache.get("s", 14, x, y) for x in range(30) for y in range(30)]
        cache.count()
    message = str(err.value)
    assert str(tmp_path / "tiles.sqlite") in message and "doctor --repair" in message and "\n" not in message


def test_a_tile_that_no_longer_decodes_is_refetched_by_the_next_fetch(tile_server: TileServer, tmp_path: Path,
                                                                      tiny_model, capsys) -> None:
    workspace = fetch_test_workspace(tile_server, tmp_path)
    ws = Workspace.load(workspace)
    cache = ws.tile_cache()
    key = ws.source().cache_key
    with sqlite3.connect(cache.path) as conn:
        z, x, y = conn.execute("SELECT z, x, y FROM tiles WHERE source_key=? LIMIT 1", (key,)).fetchone()
        conn.execute("UPDATE tiles SET data=? WHERE source_key=? AND z=? AND x=? AND y=?",
                     (b"\x89PNG damaged", key, z, x, y))
    embed = ["embed", "--workspace", str(workspace), "--batch-size", "4", "--workers", "1", "--quiet"]
    assert run(embed) == 2                                   # cells without imagery: go and fetch
    assert not cache.has(key, z, x, y)                       # ... and the damaged tile is no longer "cached"
    tile_server.reset_counts()
    assert run(["tiles", "fetch", "--workspace", str(workspace), "--quiet"]) == 0
    assert tile_server.tiles_requested == {(z, x, y)}
    assert run(embed) == 0
