"""``tiles fetch`` against a server that misbehaves on purpose: every request ends within its
bounds, nothing refused is cached, and each failure says why."""

from __future__ import annotations

import time

import pytest

from soundmap.tiles.cache import TileCache
from soundmap.tiles.fetch import RetryPolicy, fetch_tiles
from soundmap.tiles.sources import TileSource
from tests.fixtures.hostileserver import HostileServer, bomb_png, hostile_server  # noqa: F401

TILE = (14, 8647, 5560)
#: Small caps so that the bounds are reached in a fraction of a second.
POLICY = RetryPolicy(retries=1, backoff_s=0.001, max_backoff_s=0.01, timeout_s=1.0, connect_timeout_s=1.0,
                     deadline_s=0.5, max_body_bytes=256 * 1024, max_retry_after_s=0.2)


def _fetch(server: HostileServer, behaviour: str, tmp_path, **source_fields):
    source = TileSource(name=behaviour, kind="xyz", url=server.template(behaviour), **source_fields)
    cache = TileCache(tmp_path / "tiles.sqlite")
    report = fetch_tiles(source, [TILE], cache, workers=1, policy=POLICY)
    return report, cache.count()


@pytest.mark.parametrize("behaviour, reason", [
    ("endless-fast", "cap"), ("endless-slow", "deadline"), ("huge-length", "cap"),
    ("bomb", "10000×10000"), ("wrong-size", "512×512"), ("redirect-away", "redirect to localhost refused"),
    ("redirect-file", "redirect to a file:// URL refused"),
])
def test_hostile_bodies_are_cut_off_reported_and_never_cached(hostile_server: HostileServer, tmp_path,
                                                              behaviour: str, reason: str) -> None:
    bomb_png()   # built before the clock and the client's read timeout start (a real server stores it)
    started = time.monotonic()
    report, cached = _fetch(hostile_server, behaviour, tmp_path)
    assert cached == 0 and TILE in report.failed and reason in report.failed[TILE]
    assert time.monotonic() - started < 20      # bounded (a generous margin; the caps are 0.5 s)
    assert hostile_server.hits[behaviour] == 1  # a hostile answer is not asked for again


def test_endless_fast_body_stops_near_the_cap(hostile_server: HostileServer, tmp_path) -> None:
    _fetch(hostile_server, "endless-fast", tmp_path)
    hostile_server.stop()
    assert hostile_server.bytes_sent["endless-fast"] < 64 * POLICY.max_body_bytes


def test_redirect_to_the_same_host_is_followed(hostile_server: HostileServer, tmp_path) -> None:
    report, cached = _fetch(hostile_server, "redirect-same", tmp_path)
    assert report.ok and cached == 1


def test_redirect_to_a_listed_host_is_followed(hostile_server: HostileServer, tmp_path) -> None:
    report, cached = _fetch(hostile_server, "redirect-away", tmp_path, redirect_hosts=("localhost",))
    assert report.ok and cached == 1


def test_retry_after_beyond_the_cap_defers_the_tile(hostile_server: HostileServer, tmp_path) -> None:
    report, cached = _fetch(hostile_server, "retry-after", tmp_path)
    assert cached == 0 and report.failed[TILE].startswith("deferred: the server asked to wait 3600 s")
    assert hostile_server.hits["retry-after"] == 1


def test_retry_after_within_the_cap_is_waited_for_and_said(hostile_server: HostileServer, tmp_path,
                                                           capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("soundmap.progress._quiet", False)   # an earlier CLI test may have left --quiet on
    hostile_server.retry_after = "0.1"
    report, _ = _fetch(hostile_server, "retry-after", tmp_path)
    assert hostile_server.hits["retry-after"] == 2 and "HTTP 429" in report.failed[TILE]
    assert "waiting 0.1 s as the server asks (Retry-After)" in capsys.readouterr().err


def test_an_endless_metadata_answer_is_one_line(hostile_server: HostileServer) -> None:
    from soundmap.errors import TileError
    from soundmap.tiles.fetch import make_session, resolve_template

    source = TileSource(name="meta", kind="quadkey", url="https://stable.example.com/a{q}.jpeg",
                        metadata_url=hostile_server.template("endless-fast"))
    with pytest.raises(TileError, match="imagery metadata answer refused .*cap"):
        resolve_template(source, make_session(1), None, POLICY)
