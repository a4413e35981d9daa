"""Fixtures of the models tests: a loopback HTTP server for checkpoint downloads."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

import pytest

from tests.fixtures.drive_server import serving


@dataclass
class FileServer:
    """Serves ``files`` (URL path → bytes) on 127.0.0.1 with ``Range: bytes=N-`` support.

    ``cut_next`` makes the next N full-body responses stop after that many bytes (a dropped
    connection); ``honour_range`` False answers every request with the whole file (200).
    ``omit_length`` sends no Content-Length (the body ends when the connection closes);
    ``trickle_s`` sleeps that long between 1 KiB pieces; ``stall_s`` sleeps after the headers.
    Every request is recorded as (path, Range header or None, status).
    """

    files: dict[str, bytes] = field(default_factory=dict)
    honour_range: bool = True
    cut_after: int | None = None
    cut_next: int = 0
    omit_length: bool = False
    trickle_s: float = 0.0
    stall_s: float = 0.0
    requests: list[tuple[str, str | None, int]] = field(default_factory=list)
    url: str = ""

    def url_for(self, path: str) -> str:
        return f"{self.url}/{path.lstrip('/')}"


def _handler(owner: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            data = owner.files.get(path)
            range_header = self.headers.get("Range")
            if data is None:
                owner.requests.append((path, range_header, 404))
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
            if match and owner.honour_range:
                start = int(match.group(1))
                if start >= len(data):
                    owner.requests.append((path, range_header, 416))
                    self.send_response(416)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            status = 206 if start else 200
            body = data[start:]
            owner.requests.append((path, range_header, status))
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            if owner.omit_length:
                self.send_header("Connection", "close")
                self.close_connection = True
            else:
                self.send_header("Content-Length", str(len(body)))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if owner.stall_s or owner.trickle_s:
                self.wfile.flush()
                time.sleep(owner.stall_s)
            if owner.trickle_s:
                for i in range(0, len(body), 1024):
                    self.wfile.write(body[i:i + 1024])
                    self.wfile.flush()
                    time.sleep(owner.trickle_s)
                return
            if owner.cut_next > 0 and owner.cut_after is not None:
                owner.cut_next -= 1
                self.wfile.write(body[:owner.cut_after])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture()
def file_server():
    owner = FileServer()
    with serving(_handler(owner)) as owner.url:
        yield owner
