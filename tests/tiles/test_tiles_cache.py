"""The SQLite tile cache: round trips, atomic batches, concurrency across threads and processes."""

from __future__ import annotations

import pickle
import sqlite3
import threading
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pytest

from soundmap.errors import CacheError
from soundmap.tiles.cache import TileCache


def test_put_get_has_missing(cache: TileCache) -> None:
    cache.put("src-a", 3, 1, 2, b"tile-a")
    cache.put("src-b", 3, 1, 2, b"tile-b")
    assert cache.get("src-a", 3, 1, 2) == b"tile-a" and cache.get("src-b", 3, 1, 2) == b"tile-b"
    assert cache.get("src-a", 3, 2, 1) is None
    assert cache.has("src-a", 3, 1, 2) and not cache.has("src-c", 3, 1, 2)
    wanted = [(3, 0, 0), (3, 1, 2), (3, 0, 0), (4, 1, 2)]
    assert cache.missing("src-a", wanted) == [(3, 0, 0), (4, 1, 2)]  # order kept, duplicates dropped
    assert cache.count() == 2 and cache.count("src-a") == 1 and cache.sources() == {"src-a": 1, "src-b": 1}
    cache.put("src-a", 3, 1, 2, b"newer")
    assert cache.get("src-a", 3, 1, 2) == b"newer" and cache.count("src-a") == 1


def test_wal_mode_and_pickles_as_its_path(cache: TileCache) -> None:
    cache.put("s", 1, 0, 0, b"x")
    mode = sqlite3.connect(cache.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    clone = pickle.loads(pickle.dumps(cache))
    assert clone.path == cache.path and clone.get("s", 1, 0, 0) == b"x"


def test_a_batch_interrupted_mid_write_commits_nothing(cache: TileCache) -> None:
    cache.put("s", 1, 0, 0, b"before")
    conn = cache._connect()
    calls = {"n": 0}

    def interrupt_after_some_work() -> int:
        calls["n"] += 1
        return 1 if calls["n"] > 3 else 0  # non-zero aborts the running SQL statement

    conn.set_progress_handler(interrupt_after_some_work, 50)
    items = [((9, x, 0), bytes([x % 256]) * 4000) for x in range(200)]
    with pytest.raises(sqlite3.OperationalError, match="interrupted"):
        cache.put_many("s", items)
    conn.set_progress_handler(None, 0)
    assert calls["n"] > 3  # the abort really happened inside the transaction
    assert cache.count("s") == 1 and cache.count("s", z=9) == 0


def test_a_producer_interrupted_by_ctrl_c_commits_nothing(cache: TileCache) -> None:
    def tiles():
        yield (5, 0, 0), b"a"
        yield (5, 1, 0), b"b"
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.put_many("s", tiles())
    assert cache.count() == 0
    with pytest.raises(ValueError, match="empty"):
        cache.put("s", 5, 0, 0, b"")
    assert cache.count() == 0


def test_threads_write_and_read_concurrently(cache: TileCache) -> None:
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for x in range(25):
                cache.put("s", 10, x, k, f"{x},{k}".encode())
                assert cache.get("s", 10, x, k) == f"{x},{k}".encode()
        except BaseException as exc:  # surfaced below: a thread's assertion would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and cache.count("s") == 200


def _write_rows(path: str, k: int) -> int:
    target = TileCache(path)
    target.put_many("p", [((12, x, k), b"%d" % x) for x in range(50)])
    return target.count("p")


def test_processes_share_one_cache_file(cache: TileCache) -> None:
    cache.put("p", 0, 0, 0, b"seed")
    with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn")) as pool:
        list(pool.map(_write_rows, [str(cache.path)] * 4, range(4)))
    assert cache.count("p") == 201 and cache.get("p", 12, 49, 3) == b"49"


def test_a_damaged_cache_file_is_a_one_line_cache_error(tmp_path: Path) -> None:
    path = tmp_path / "tiles.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CacheError, match="unreadable"):
        TileCache(path).get("s", 1, 0, 0)


def test_missing_scans_ranges_for_many_tiles_with_the_same_answer(cache: TileCache) -> None:
    wanted = [(13, x, y) for x in range(100, 130) for y in range(200, 230)]  # 900 tiles: range-scan path
    cached = wanted[::3]
    cache.put_many("s", [(t, b"t") for t in cached])
    cache.put_many("s", [((13, 129, 231), b"outside the wanted set"), ((12, 110, 210), b"other zoom")])
    cache.put_many("other", [(t, b"o") for t in wanted[1::3]])
    expected = [t for t in wanted if t not in set(cached)]
    assert cache.missing("s", wanted + [(12, 110, 210), (12, 0, 0)]) == expected + [(12, 0, 0)]
    assert cache.missing("s", list(reversed(wanted)))[:2] == [wanted[-1], wanted[-2]]


def test_unopenable_and_full_caches_are_one_line_cache_errors(tmp_path: Path, cache: TileCache) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(CacheError, match="cannot open tile cache"):
        TileCache(tmp_path / "a-file" / "tiles.sqlite").get("s", 1, 0, 0)
    cache.put("s", 1, 0, 0, b"small")
    cache._connect().execute("PRAGMA max_page_count = 10")  # a disk that is about to be full
    with pytest.raises(CacheError, match="cannot write to tile cache .*full"):
        cache.put_many("s", [((9, x, 0), bytes(50_000)) for x in range(4)])
    assert cache.count("s") == 1 and cache.get("s", 1, 0, 0) == b"small"
