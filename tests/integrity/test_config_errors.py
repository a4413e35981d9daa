"""Configuration files that are malformed in ways that used to end in a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from soundmap.errors import ConfigError
from soundmap.tiles.sources import load_config

SOURCE = {"kind": "xyz", "url": "https://tiles.example.org/{z}/{x}/{y}.png", "family": "sentinel",
          "attribution": "x", "licence": "y"}


def test_tiles_yaml_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "tiles.yaml"
    path.write_bytes("sources:\n  caf\xe9:\n    kind: xyz\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config(path)


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "line\nbreak"])
def test_header_values_with_cr_lf_are_refused(tmp_path: Path, value: str) -> None:
    path = tmp_path / "tiles.yaml"
    path.write_text(yaml.safe_dump({"sources": {"s": {**SOURCE, "headers": {"Referer": value}}}}))
    with pytest.raises(ConfigError, match="no CR, LF or NUL"):
        load_config(path)


def test_redirect_hosts_must_be_a_list(tmp_path: Path) -> None:
    path = tmp_path / "tiles.yaml"
    path.write_text(yaml.safe_dump({"sources": {"s": {**SOURCE, "redirect_hosts": "cdn.example.org"}}}))
    with pytest.raises(ConfigError, match="redirect_hosts must be a list"):
        load_config(path)


def test_a_file_source_that_is_not_a_raster_is_named_at_fetch(tmp_path: Path, capsys) -> None:
    from soundmap.cli.main import run

    bogus = tmp_path / "scene.tif"
    bogus.write_text("this is a text file, not a GeoTIFF\n")
    config = tmp_path / "tiles.yaml"
    config.write_text(yaml.safe_dump({"sources": {"scene": {**SOURCE, "kind": "file", "url": str(bogus)}}}))
    code = run(["tiles", "fetch", "--bbox", "10,50,10.1,50.05", "--source", "scene", "--tiles-config", str(config),
                "--workspace", str(tmp_path / "ws"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and f"raster {bogus} cannot be read" in err and len(err.splitlines()) == 1
