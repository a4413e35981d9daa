"""The fetcher against a real loopback HTTP server: only missing tiles are requested, retries,
permanent failures, resumability after Ctrl-C, quadkey URLs, and politeness headers."""

from __future__ import annotations

import email.utils
import time
from pathlib import Path

import pytest
import requests

import soundmap.tiles.fetch as fetch_module
from soundmap.errors import ConfigError, TileError
from soundmap.tiles.cache import TileCache
from soundmap.tiles.fetch import RetryPolicy, fetch_tiles, image_problem, retry_after_s
from soundmap.tiles.sources import resolve_source
from tests.fixtures.tilegen import tile_jpeg, tile_png
from tests.fixtures.tileserver import ALWAYS, CORRUPT_BODY, TileServer

TILES = [(12, x, y) for x in range(2200, 2206) for y in range(1340, 1344)]  # 24 tiles


@pytest.fixture
def source(tiles_yaml: Path):
    return resolve_source("test-xyz", config_path=tiles_yaml)


def test_fetches_each_missing_tile_once_and_a_second_run_downloads_nothing(
        tile_server: TileServer, source, cache: TileCache, fast_policy: RetryPolicy) -> None:
    report = fetch_tiles(source, TILES + TILES[:5], cache, workers=8, policy=fast_policy)
    assert (report.requested, report.cached, report.downloaded, report.failed) == (24, 0, 24, {})
    assert report.ok and report.bytes_downloaded == sum(len(tile_png(*t)) for t in TILES)
    assert tile_server.tile_counts == {t: 1 for t in TILES}
    assert all(cache.get(source.cache_key, *t) == tile_png(*t) for t in TILES)
    tile_server.reset_counts()
    again = fetch_tiles(source, TILES, cache, workers=8, policy=fast_policy)
    assert (again.cached, again.downloaded) == (24, 0) and tile_server.requests == []


def test_sends_a_descriptive_user_agent_and_configured_headers(
        tile_server: TileServer, tmp_path: Path, cache: TileCache) -> None:
    config = tile_server.write_tiles_yaml(tmp_path / "t.yaml", extra={"polite": {
        "kind": "xyz", "url": tile_server.xyz_template, "family": "sentinel", "attribution": "a",
        "licence": "l", "headers": {"Referer": "https://soundmap.example"}}})
    fetch_tiles(resolve_source("polite", config_path=config), TILES[:2], cache, workers=2)
    for headers in tile_server.headers_seen:
        assert headers["User-Agent"].startswith("soundmap/") and "research" in headers["User-Agent"]
        assert headers["Referer"] == "https://soundmap.example"


def test_429_honours_retry_after(tile_server: TileServer, source, cache: TileCache,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr(fetch_module, "_pause", lambda stop, seconds: waits.append(seconds))
    tile_server.rate_limit[TILES[0]] = 2
    tile_server.retry_after = "7"
    policy = RetryPolicy(retries=3, backoff_s=0.001, max_backoff_s=0.01)
    report = fetch_tiles(source, TILES[:1], cache, workers=1, policy=policy)
    assert report.ok and tile_server.tile_counts[TILES[0]] == 3
    assert waits == [7.0, 7.0]  # the server's wait, not our (millisecond) backoff
    assert cache.get(source.cache_key, *TILES[0]) == tile_png(*TILES[0])


def test_retry_after_formats() -> None:
    def response(value: str | None) -> requests.Response:
        r = requests.Response()
        if value is not None:
            r.headers["Retry-After"] = value
        return r

    assert retry_after_s(response("7"), 300) == 7.0
    assert retry_after_s(response("9999"), 300) == 300.0  # capped
    assert retry_after_s(response(None), 300) is None and retry_after_s(response("soon"), 300) is None
    later = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 50 <= retry_after_s(response(later), 300) <= 61


def test_500s_and_corrupt_bodies_are_retried_and_never_cached(
        tile_server: TileServer, source, cache: TileCache, fast_policy: RetryPolicy) -> None:
    flaky, corrupt = TILES[1], TILES[2]
    tile_server.server_error[flaky] = 2
    tile_server.corrupt[corrupt] = 3  # three bad bodies, then the real tile (retries=3 -> 4 attempts)
    report = fetch_tiles(source, TILES, cache, workers=4, policy=fast_policy)
    assert report.ok and report.downloaded == 24
    assert tile_server.tile_counts[flaky] == 3 and tile_server.tile_counts[corrupt] == 4
    assert cache.get(source.cache_key, *corrupt) == tile_png(*corrupt)


def test_permanent_failures_are_reported_with_reasons_not_cached(
        tile_server: TileServer, source, cache: TileCache, fast_policy: RetryPolicy) -> None:
    broken, garbage, absent = TILES[0], TILES[1], TILES[2]
    tile_server.server_error[broken] = ALWAYS
    tile_server.corrupt[garbage] = ALWAYS
    tile_server.not_found.add(absent)
    report = fetch_tiles(source, TILES, cache, workers=4, policy=fast_policy)
    assert report.failed == {broken: "HTTP 500", garbage: "not a decodable image",
                             absent: "HTTP 404 (no tile there)"}
    assert not report.ok and report.downloaded == 21 and "3 failed" in report.summary()
    assert tile_server.tile_counts[broken] == 4 and tile_server.tile_counts[garbage] == 4
    assert tile_server.tile_counts[absent] == 1  # a 404 is an answer, not a hiccup
    assert cache.missing(source.cache_key, TILES) == [broken, garbage, absent]


def test_connection_errors_are_retried_then_reported(cache: TileCache, fast_policy: RetryPolicy) -> None:
    with TileServer() as server:
        template = server.xyz_template  # a port that is closed once the server stops
    dead = resolve_source(template)
    report = fetch_tiles(dead, TILES[:2], cache, workers=2, policy=fast_policy)
    assert set(report.failed) == set(TILES[:2]) and report.failed[TILES[0]] == "ConnectionError"
    assert cache.count() == 0


def test_interrupted_fetch_resumes_with_only_the_remaining_tiles(
        tile_server: TileServer, source, cache: TileCache, fast_policy: RetryPolicy) -> None:
    done: list[tuple[int, int, int]] = []

    def ctrl_c_after_ten(tile: tuple[int, int, int], ok: bool) -> None:
        done.append(tile)
        if len(done) == 10:
            raise KeyboardInterrupt

    tile_server.latency_s = 0.005
    with pytest.raises(KeyboardInterrupt):
        fetch_tiles(source, TILES, cache, workers=3, policy=fast_policy, commit_every=4,
                    on_tile=ctrl_c_after_ten)
    kept = [t for t in TILES if cache.has(source.cache_key, *t)]
    assert 8 <= len(kept) <= 10  # complete tiles downloaded before the interrupt were kept
    assert all(cache.get(source.cache_key, *t) == tile_png(*t) for t in kept)  # no half/corrupt rows
    remaining = cache.missing(source.cache_key, TILES)
    time.sleep(0.1)  # let in-flight requests of the aborted run finish before counting anew
    tile_server.reset_counts()
    report = fetch_tiles(source, TILES, cache, workers=3, policy=fast_policy)
    assert report.ok and report.cached == len(kept) and report.downloaded == len(remaining)
    assert tile_server.tile_counts == {t: 1 for t in remaining}
    assert cache.missing(source.cache_key, TILES) == []


def test_quadkey_source_requests_quadkey_urls_with_the_key(
        tile_server: TileServer, tiles_yaml: Path, cache: TileCache, monkeypatch: pytest.MonkeyPatch,
        fast_policy: RetryPolicy) -> None:
    bing_like = resolve_source("test-quadkey", config_path=tiles_yaml)
    monkeypatch.delenv("SOUNDMAP_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="SOUNDMAP_TEST_KEY"):
        fetch_tiles(bing_like, [(3, 3, 5)], cache)
    assert tile_server.requests == []  # no request without the key
    monkeypatch.setenv("SOUNDMAP_TEST_KEY", "k3y")
    report = fetch_tiles(bing_like, [(3, 3, 5), (1, 1, 0)], cache, policy=fast_policy)
    assert report.ok and sorted(tile_server.requests) == ["/q/1.png?key=k3y", "/q/213.png?key=k3y"]
    assert cache.get(bing_like.cache_key, 3, 3, 5) == tile_png(3, 3, 5)


def test_zyx_and_jpeg_sources(tile_server: TileServer, tiles_yaml: Path, cache: TileCache) -> None:
    zyx = resolve_source("test-zyx", config_path=tiles_yaml)
    jpeg = resolve_source("test-jpeg", config_path=tiles_yaml)
    assert fetch_tiles(zyx, [(12, 2200, 1340)], cache).ok
    assert fetch_tiles(jpeg, [(12, 2200, 1340)], cache).ok
    assert tile_server.requests == ["/zyx/12/1340/2200.png", "/jpg/12/2200/1340.jpg"]
    assert cache.get(zyx.cache_key, 12, 2200, 1340) == tile_png(12, 2200, 1340)
    assert cache.get(jpeg.cache_key, 12, 2200, 1340) == tile_jpeg(12, 2200, 1340)


def test_image_problem_decodes_the_pixels() -> None:
    good = tile_jpeg(5, 1, 1)
    assert image_problem(good) is None and image_problem(tile_png(5, 1, 1)) is None
    assert image_problem(good[: len(good) // 2]) == "not a decodable image"  # truncated JPEG
    assert image_problem(CORRUPT_BODY) == "not a decodable image"
    assert image_problem(b"") == "empty body"


def test_backoff_grows_exponentially_and_is_capped() -> None:
    policy = RetryPolicy(backoff_s=1.0, max_backoff_s=5.0)
    assert 0.75 <= policy.backoff(0) <= 1.25 and 3.0 <= policy.backoff(2) <= 5.0
    assert policy.backoff(10) <= 6.25


def test_bing_style_metadata_call_gives_the_tile_template(
        tile_server: TileServer, tiles_yaml: Path, cache: TileCache, monkeypatch: pytest.MonkeyPatch,
        fast_policy: RetryPolicy) -> None:
    bing_like = resolve_source("test-bing", config_path=tiles_yaml)
    monkeypatch.setenv("SOUNDMAP_TEST_KEY", "wrong")
    with pytest.raises(TileError, match=r"metadata request refused \(HTTP 401\): check \$SOUNDMAP_TEST_KEY"):
        fetch_tiles(bing_like, [(3, 3, 5)], cache, policy=fast_policy)
    assert tile_server.tile_counts == {}
    monkeypatch.setenv("SOUNDMAP_TEST_KEY", "k3y")
    tile_server.reset_counts()
    report = fetch_tiles(bing_like, [(3, 3, 5), (1, 1, 0)], cache, policy=fast_policy)
    assert report.ok
    # one metadata call with the key, then quadkey tiles on the subdomain picked by (x + y) % 2
    assert sorted(tile_server.requests) == ["/REST/v1/Imagery/Metadata/Aerial?key=k3y&uriScheme=http",
                                            "/q/1.png?sub=t1&c=en-US", "/q/213.png?sub=t0&c=en-US"]
    assert cache.get(bing_like.cache_key, 3, 3, 5) == tile_png(3, 3, 5)
    assert bing_like.cache_key.startswith("stable.example.com/")  # named by tiles.yaml's url, not the answer
    tile_server.reset_counts()
    assert fetch_tiles(bing_like, [(3, 3, 5)], cache).cached == 1 and tile_server.requests == []


def test_an_unreachable_host_stops_early_with_one_line(cache: TileCache, fast_policy: RetryPolicy) -> None:
    with TileServer() as server:
        template = server.xyz_template
    tiles = [(12, x, 0) for x in range(200)]
    with pytest.raises(TileError, match=r"the first \d+ tiles from 127.0.0.1 all failed \(ConnectionError\)"):
        fetch_tiles(resolve_source(template), tiles, cache, workers=2, policy=fast_policy, give_up_after=10)


def test_downloads_overlap_in_time(tile_server: TileServer, source, cache: TileCache) -> None:
    tile_server.latency_s = 0.05  # each answer waits, so parallel workers must overlap on the server
    assert fetch_tiles(source, TILES, cache, workers=8).ok
    assert tile_server.max_in_flight >= 3  # counted by the server, not timed
