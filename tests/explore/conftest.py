"""Explorer fixtures: the real app served by uvicorn on 127.0.0.1 over the loopback-fetched,
tiny-PSM-embedded query workspace (tests/fixtures/query_workspace.py)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.fixtures.query_workspace import QueryEnv, _Built, install_models


@dataclass
class LiveExplorer:
    """A running explorer: its base URL, the workspace it serves and the Explorer object."""

    url: str
    workspace: Path
    explorer: object
    client: httpx.Client


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def live_explorer(query_env: QueryEnv, _built_query_workspace: _Built,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveExplorer]:
    """``soundmap explore``'s app on a free loopback port, in a thread of this process."""
    import uvicorn

    from soundmap.explore.app import create_app
    from soundmap.explore.session import Explorer

    # the imagery tiles were fetched into the fixture's own cache: serve the basemap from there
    monkeypatch.setenv("SOUNDMAP_CACHE", str(_built_query_workspace.workspace.parent / "cache"))
    install_models(_built_query_workspace.models)
    explorer = Explorer(query_env.workspace, max_upload_bytes=2 * 2**20, max_audio_seconds=30.0)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(explorer), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the explorer did not start"
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}/"
    with httpx.Client(base_url=url, timeout=60) as client:
        yield LiveExplorer(url=url, workspace=query_env.workspace, explorer=explorer, client=client)
    server.should_exit = True
    thread.join(timeout=10)
    explorer.close()


def wait_query(client: httpx.Client, payload: dict, endpoint: str = "api/query") -> dict:
    """POST a query and poll while its metadata setting is fused (202); the final JSON."""
    deadline = time.monotonic() + 120
    seen_pending = False
    while True:
        response = client.post(endpoint, json=payload)
        if response.status_code != 202:
            assert response.status_code == 200, response.text
            data = response.json()
            data["_was_pending"] = seen_pending
            return data
        seen_pending = True
        assert time.monotonic() < deadline, "fusion did not finish"
        time.sleep(0.1)
