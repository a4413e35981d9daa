"""Every model download is bounded: http(s) only, connect/read timeouts, a total deadline, never
more bytes than expected, and no connection at all under SOUNDMAP_OFFLINE=1."""

from __future__ import annotations

from pathlib import Path

import pytest

from soundmap.download import download
from soundmap.errors import DownloadError

BODY = bytes(range(256)) * 800  # 204,800 bytes


def test_body_longer_than_expected_is_cut_off_and_deleted(file_server, tmp_path: Path) -> None:
    file_server.files["/m.ckpt"] = BODY
    dest = tmp_path / "m.ckpt"
    with pytest.raises(DownloadError, match="announces 204800 bytes, more than the 100000 expected"):
        download(file_server.url_for("m.ckpt"), dest, max_bytes=100_000)
    file_server.omit_length = True  # no Content-Length: the stream itself is cut at the cap
    with pytest.raises(DownloadError, match="sent more than the 100000 bytes expected") as err:
        download(file_server.url_for("m.ckpt"), dest, max_bytes=100_000)
    assert "\n" not in str(err.value) and not dest.exists() and not Path(f"{dest}.part").exists()
    with pytest.raises(DownloadError, match="sent more than the 1000 bytes expected"):
        download(file_server.url_for("m.ckpt"), dest, size=1000)  # an exact size caps too
    assert download(file_server.url_for("m.ckpt"), dest, max_bytes=len(BODY)).read_bytes() == BODY


def test_total_deadline_stops_a_trickling_server_and_keeps_the_part(file_server, tmp_path: Path) -> None:
    file_server.files["/slow.ckpt"] = BODY
    file_server.trickle_s = 0.05  # ~10 s for the whole body
    dest = tmp_path / "slow.ckpt"
    with pytest.raises(DownloadError, match="deadline.*run the command again to resume"):
        download(file_server.url_for("slow.ckpt"), dest, deadline_s=0.3)
    kept = Path(f"{dest}.part").stat().st_size
    assert 0 < kept < len(BODY)
    file_server.trickle_s = 0.0
    assert download(file_server.url_for("slow.ckpt"), dest).read_bytes() == BODY
    assert file_server.requests[-1][1:] == (f"bytes={kept}-", 206)  # resumed, not restarted


def test_read_timeout_applies_to_a_silent_server(file_server, tmp_path: Path, monkeypatch) -> None:
    file_server.files["/stall.ckpt"] = BODY
    file_server.stall_s = 3.0
    monkeypatch.setenv("SOUNDMAP_DOWNLOAD_READ_TIMEOUT", "0.3")
    with pytest.raises(DownloadError, match=r"failed after 1 attempts \(ConnectionError\); run the command again"):
        download(file_server.url_for("stall.ckpt"), tmp_path / "s.ckpt", retries=0)


def test_only_http_urls_and_nothing_offline(file_server, tmp_path: Path, monkeypatch) -> None:
    for url in ("file:///etc/passwd", "ftp://example.invalid/a.ckpt", "/tmp/a.ckpt"):
        with pytest.raises(DownloadError, match="only http:// and https://"):
            download(url, tmp_path / "a.ckpt")
    file_server.files["/a.ckpt"] = BODY
    monkeypatch.setenv("SOUNDMAP_OFFLINE", "1")
    with pytest.raises(DownloadError, match="SOUNDMAP_OFFLINE=1: not downloading"):
        download(file_server.url_for("a.ckpt"), tmp_path / "a.ckpt")
    assert file_server.requests == []
