"""``--open`` and ``soundmap map --explore`` open the explorer in the user's browser. The browser is
the one ``$BROWSER`` names (what Python's ``webbrowser`` honours): here a script that records the
URL it is given, so the test sees exactly what a browser would have been asked to open."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.fixtures.query_workspace import QUERY_BBOX, QueryEnv, _Built, install_models
from tests.fixtures.tileserver import TileServer

REPO = Path(__file__).resolve().parents[2]


def _recording_browser(tmp_path: Path) -> tuple[str, Path]:
    opened = tmp_path / "opened.txt"
    script = tmp_path / "browser.sh"
    script.write_text(f'#!/bin/sh\nprintf "%s" "$1" > "{opened}"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return f"{script} %s", opened


def _opened_url(process: subprocess.Popen, opened: Path, seconds: float = 180) -> str:
    deadline = time.monotonic() + seconds
    while not (opened.is_file() and opened.read_text().strip()):
        assert process.poll() is None, f"soundmap exited early: {process.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "the browser was never asked to open the page"
        time.sleep(0.2)
    return opened.read_text().strip()


def _answers(url: str) -> dict:
    deadline = time.monotonic() + 30
    while True:
        try:
            response = httpx.get(url.rstrip("/") + "/api/info", timeout=10)
            if response.status_code == 200:
                return response.json()
        except httpx.ConnectError:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer"
        time.sleep(0.1)


def _run(args: list[str], browser: str) -> subprocess.Popen:
    env = {**os.environ, "BROWSER": browser, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "soundmap", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.communicate(timeout=30)


def test_explore_open_asks_the_browser_for_the_page(query_env: QueryEnv, _built_query_workspace: _Built,
                                                    monkeypatch, tmp_path: Path) -> None:
    import socket

    monkeypatch.setenv("SOUNDMAP_CACHE", str(_built_query_workspace.workspace.parent / "cache"))
    install_models(_built_query_workspace.models)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    browser, opened = _recording_browser(tmp_path)
    process = _run(["explore", "--workspace", str(query_env.workspace), "--port", str(port), "--open"], browser)
    try:
        url = _opened_url(process, opened)
        assert url == f"http://127.0.0.1:{port}/"
        assert _answers(url)
    finally:
        _stop(process)


def test_map_explore_opens_the_explorer_on_the_map_it_made(installed_models: str, tile_server: TileServer,
                                                           tmp_path: Path) -> None:
    browser, opened = _recording_browser(tmp_path)
    out = tmp_path / "map.tif"
    process = _run(["map", "--bbox", QUERY_BBOX, "--text", "sound of insects", "--hour", "20", "--out", str(out),
                    "--source", tile_server.xyz_template, "--model", installed_models, "--stride", "5000",
                    "--quiet", "--explore"], browser)
    try:
        url = _opened_url(process, opened)
        assert out.is_file(), "the map is written before the explorer opens"
        info = _answers(url)
        assert installed_models in str(info)
    finally:
        _stop(process)
