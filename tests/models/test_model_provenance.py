"""A released model name installed from an arbitrary --url says so in `models info`, and a URL of
another scheme is one line, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from soundmap.cli.main import run
from tests.fixtures.tiny_models import write_author_checkpoint


def test_a_released_name_from_another_url_is_shown_unverified(file_server, tiny_psm_model, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = write_author_checkpoint(tiny_psm_model, tmp_path / "x.ckpt")
    file_server.files["/x.ckpt"] = ckpt.read_bytes()
    url = file_server.url_for("x.ckpt")
    assert run(["models", "pull", "psm-geosound-sentinel-meta", "--url", url, "-q"]) == 0
    capsys.readouterr()
    assert run(["models", "info", "psm-geosound-sentinel-meta"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("provenance:"))
    assert url in line and "UNVERIFIED" in line and "checkpoint sha256" in line


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.org/x.ckpt"])
def test_pull_refuses_other_schemes_in_one_line(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["models", "pull", "psm-geosound-sentinel-meta", "--url", url]) == 2
    err = capsys.readouterr().err.strip()
    assert "only http:// and https:// URLs are fetched" in err and "models import" in err and len(err.splitlines()) == 1
