"""The explorer page in a real browser: ``soundmap explore`` started as a command, Debian's headless
Chromium (``/usr/bin/chromium``, installed by .ci/run) driven by Playwright. The page loads, a
typed query draws an overlay, another query and another hour change the overlay's pixels, and a
click on a cell shows its score. Screenshots are kept under the test's temp dir."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.fixtures.query_workspace import QueryEnv, _Built, install_models

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def explore_command(query_env: QueryEnv, _built_query_workspace: _Built, monkeypatch: pytest.MonkeyPatch,
                    tmp_path: Path) -> Iterator[str]:
    """``soundmap explore --workspace WS --port 0-ish`` as a subprocess; yields the URL it prints."""
    import socket

    monkeypatch.setenv("SOUNDMAP_CACHE", str(_built_query_workspace.workspace.parent / "cache"))
    install_models(_built_query_workspace.models)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(tmp_path / "explore.log", "w+")
    process = subprocess.Popen([sys.executable, "-m", "soundmap", "explore", "--workspace", str(query_env.workspace),
                                "--port", str(port)], stdout=subprocess.PIPE, stderr=log, text=True,
                               env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    try:
        line = process.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        assert match, f"no URL printed: {line!r}"
        _wait_up(match.group(1))
        yield match.group(1)
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


def _wait_up(url: str) -> None:
    """The URL is printed just before uvicorn starts listening: wait until it answers."""
    import httpx

    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "api/info", timeout=10).status_code == 200:
                return
        except httpx.ConnectError:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer"
        time.sleep(0.1)


def _map_pixels(page, path: Path) -> np.ndarray:
    data = page.locator("#map").screenshot(path=str(path))
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def _wait_overlay(page, previous: str | None) -> str:
    page.wait_for_function("(prev) => { const o = document.body.dataset.overlay;"
                           " return o && o !== 'loading' && o !== 'error' && o !== prev; }", arg=previous,
                           timeout=60_000)
    page.wait_for_timeout(300)  # let the old layer go and the new one paint
    return page.evaluate("document.body.dataset.overlay")


def test_page_queries_hours_and_clicks_in_headless_chromium(explore_command: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1100, "height": 700})
        try:
            page = context.pages[0] if context.pages else context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(explore_command)
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            assert "Imagery:" in page.inner_text("#attribution") and page.is_visible("#attribution")
            before = _map_pixels(page, shots / "0-basemap.png")

            page.fill("#text", "birds singing")
            page.click("#go")
            birds = _wait_overlay(page, None)
            birds_px = _map_pixels(page, shots / "1-birds.png")
            page.screenshot(path=str(shots / "page-birds.png"))
            assert np.abs(birds_px - before).sum() > 0  # the overlay is drawn over the basemap
            low, high = page.inner_text("#legend-low"), page.inner_text("#legend-high")
            assert float(low) < float(high)  # the legend shows the value range
            assert "text=birds+singing" in page.url or "text=birds%20singing" in page.url  # the URL holds the state

            page.fill("#text", "traffic noise")
            page.click("#go")
            traffic = _wait_overlay(page, birds)
            traffic_px = _map_pixels(page, shots / "2-traffic.png")
            assert np.abs(traffic_px - birds_px).sum() > 1000, "another query must change the overlay"

            page.eval_on_selector("#hour", "(el) => { el.value = 22; el.dispatchEvent(new Event('change')); }")
            _wait_overlay(page, traffic)
            night_px = _map_pixels(page, shots / "3-traffic-hour22.png")
            assert np.abs(night_px - traffic_px).sum() > 1000, "another hour must change the overlay"
            assert "hour=22" in page.url

            point = page.evaluate("""() => {
                const m = window.soundmapExplorer.map, b = window.soundmapExplorer.info.bbox;
                const p = m.latLngToContainerPoint([b[1] + 0.2 * (b[3] - b[1]), b[0] + 0.2 * (b[2] - b[0])]);
                return [p.x, p.y]; }""")
            page.locator("#map").click(position={"x": point[0], "y": point[1]})
            page.wait_for_selector("#cell-text .cell-line", timeout=30_000)
            text = page.inner_text("#cell-text")
            assert re.search(r"text: traffic noise: score -?\d+\.\d+, rank \d+ of \d+", text), text
            assert "lat " in text and "lon " in text
            page.wait_for_function("document.getElementById('cell-image').naturalWidth > 0", timeout=30_000)
            page.screenshot(path=str(shots / "page-click.png"))

            link = page.url  # the URL holds the state: a new tab opened on it shows the same view
            other = context.new_page()
            other.goto(link)
            other.wait_for_selector("body[data-ready='1']", timeout=30_000)
            assert _wait_overlay(other, None) == page.evaluate("document.body.dataset.overlay")
            assert other.input_value("#text") == "traffic noise" and other.input_value("#hour") == "22"
            assert not errors, errors
        finally:
            context.close()
    assert len(list(shots.glob("*.png"))) == 6


def test_explore_binds_loopback_unless_host_is_given(query_env: QueryEnv, _built_query_workspace: _Built,
                                                     monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Another interface only with --host, and then with a warning on stderr (even under --quiet)."""
    import socket

    import httpx

    monkeypatch.setenv("SOUNDMAP_CACHE", str(_built_query_workspace.workspace.parent / "cache"))
    install_models(_built_query_workspace.models)
    with socket.socket() as sock:
        sock.bind(("127.0.0.2", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "soundmap", "explore", "--workspace", str(query_env.workspace),
                                "--port", str(port), "--host", "127.0.0.2", "--quiet"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    try:
        line = process.stdout.readline()
        assert f"http://127.0.0.2:{port}/" in line
        _wait_up(f"http://127.0.0.2:{port}/")
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/api/info", timeout=5)
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=20)
    assert "warning: listening on 127.0.0.2" in stderr
