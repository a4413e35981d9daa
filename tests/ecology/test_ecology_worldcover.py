"""ESA WorldCover over HTTP range requests: names, windows only, local cache, missing tiles.

A loopback server (tests/fixtures/rangeserver.py) serves a generated COG named like a WorldCover
tile; no test touches the network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from soundmap.ecology.bga import load_weights
from soundmap.ecology.landcover import (WORLDCOVER_URL_ENV, WorldCoverSource, grid_bga, worldcover_tiles,
                                        worldcover_url)
from soundmap.errors import InputError, TileError
from soundmap.geo.grid import Grid

from .conftest import TREE, WATER, write_class_raster

TILE = "N48E009"          # lower-left (48 N, 9 E): covers 48–51 N, 9–12 E
RES = 1 / 400             # 0.0025°: 1200 × 1200 pixels for the 3° tile (real WorldCover: 36000)
LAEA_10_5 = "+proj=laea +lat_0=49.550000 +lon_0=10.500000 +x_0=0 +y_0=0 +datum=WGS84 +units=m +no_defs"


def test_tile_names_follow_the_lower_left_corner() -> None:
    assert worldcover_tiles(-0.2, 51.4, -0.1, 51.6) == [("N51W003", 51, -3)]
    assert worldcover_tiles(-74.1, -1.6, -74.0, -1.5) == [("S03W075", -3, -75)]
    assert [t[0] for t in worldcover_tiles(2.9, 0.5, 3.1, 0.6)] == ["N00E000", "N00E003"]


def test_urls_name_version_and_year() -> None:
    assert worldcover_url("https://host/", 2021, "N51W003") == \
        "https://host/v200/2021/map/ESA_WorldCover_10m_2021_v200_N51W003_Map.tif"
    assert worldcover_url("https://host", 2020, "S03W075") == \
        "https://host/v100/2020/map/ESA_WorldCover_10m_2020_v100_S03W075_Map.tif"
    with pytest.raises(InputError, match="2021"):
        WorldCoverSource(year=2019)


def _serve_tile(root: Path) -> Path:
    """A 3° tile of random classes, except tree west / water east of 10.5 E around (10.5 E, 49.55 N)."""
    rng = np.random.default_rng(3)
    codes = np.array([10, 20, 30, 40, 50, 60, 80, 90], dtype=np.uint8)
    classes = codes[rng.integers(0, codes.size, size=(1200, 1200))]
    # rows/cols of the clean window: lat 49.5–49.6 N, lon 10.4–10.6 E
    r0, r1 = round((51 - 49.6) / RES), round((51 - 49.5) / RES)
    c0, cm, c1 = round((10.4 - 9) / RES), round((10.5 - 9) / RES), round((10.6 - 9) / RES)
    classes[r0:r1, c0:cm] = 10
    classes[r0:r1, cm:c1] = 80
    path = root / "v200" / "2021" / "map" / f"ESA_WorldCover_10m_2021_v200_{TILE}_Map.tif"
    path.parent.mkdir(parents=True)
    return write_class_raster(path, classes, crs="EPSG:4326", transform=Affine(RES, 0, 9, 0, -RES, 51),
                              blocksize=128, cog=True)


def _grid() -> Grid:
    """Two 1 km cells either side of 10.5 E at 49.55 N (the meridian is the LAEA's x = 0)."""
    return Grid(crs=LAEA_10_5, x0=-1000, y0=500, stride=1000, footprint=1000, rows=1, cols=2, zoom=1,
                family="sentinel")


def test_reads_only_the_windows_it_needs_then_hits_the_cache(range_server, tmp_path: Path) -> None:
    tile = _serve_tile(range_server.root)
    source = WorldCoverSource(base_url=range_server.url, cache_root=tmp_path / "lc")
    first = grid_bga(_grid(), source, load_weights())
    np.testing.assert_allclose(first.values[:, 0, 0], TREE, atol=1e-9)
    np.testing.assert_allclose(first.values[:, 0, 1], WATER, atol=1e-9)
    served = range_server.bytes_sent(f"{TILE}_Map.tif")
    size = tile.stat().st_size
    assert size > 500_000
    assert 0 < served < size / 10, f"read {served} of {size} bytes"
    assert all(r.status in (200, 206) for r in range_server.requests if r.method == "GET")
    assert any(r.status == 206 for r in range_server.requests)
    cached = sorted(p.name for p in (tmp_path / "lc").rglob("*.tif"))
    assert cached and len(cached) <= 4

    range_server.reset()
    again = grid_bga(_grid(), WorldCoverSource(base_url=range_server.url, cache_root=tmp_path / "lc"),
                     load_weights())
    assert range_server.requests == []
    np.testing.assert_array_equal(again.values, first.values)


def test_regions_across_a_tile_edge_mosaic_both_tiles(range_server, tmp_path: Path) -> None:
    for name, lon0, code in (("N48E009", 9, 10), ("N48E012", 12, 80)):   # tree west of 12 E, water east
        path = range_server.root / "v200" / "2021" / "map" / f"ESA_WorldCover_10m_2021_v200_{name}_Map.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_class_raster(path, np.full((300, 300), code, dtype=np.uint8), crs="EPSG:4326",
                           transform=Affine(0.01, 0, lon0, 0, -0.01, 51), blocksize=64, cog=True)
    laea = "+proj=laea +lat_0=49.550000 +lon_0=12.000000 +x_0=0 +y_0=0 +datum=WGS84 +units=m +no_defs"
    grid = Grid(crs=laea, x0=-1500, y0=500, stride=1000, footprint=1000, rows=1, cols=3, zoom=1, family="sentinel")
    result = grid_bga(grid, WorldCoverSource(base_url=range_server.url, cache_root=tmp_path / "lc"), load_weights())
    np.testing.assert_allclose(result.values[:, 0, 0], TREE, atol=1e-9)
    np.testing.assert_allclose(result.values[:, 0, 1], np.add(TREE, WATER) / 2, atol=1e-9)
    np.testing.assert_allclose(result.values[:, 0, 2], WATER, atol=1e-9)
    assert {r.path.rsplit("_", 2)[-2] for r in range_server.requests} == {"N48E009", "N48E012"}


def test_base_url_comes_from_the_environment(range_server, tmp_path: Path, monkeypatch) -> None:
    _serve_tile(range_server.root)
    monkeypatch.setenv(WORLDCOVER_URL_ENV, range_server.url)
    result = grid_bga(_grid(), WorldCoverSource(cache_root=tmp_path / "lc"), load_weights())
    np.testing.assert_allclose(result.values[:, 0, 0], TREE, atol=1e-9)
    assert range_server.requests


def test_a_tile_the_bucket_lacks_is_nodata_and_remembered(range_server, tmp_path: Path) -> None:
    source = WorldCoverSource(base_url=range_server.url, cache_root=tmp_path / "lc")
    result = grid_bga(_grid(), source, load_weights())
    assert np.all(np.isnan(result.values))
    assert any(r.status == 404 for r in range_server.requests)
    range_server.reset()
    grid_bga(_grid(), WorldCoverSource(base_url=range_server.url, cache_root=tmp_path / "lc"), load_weights())
    assert range_server.requests == []


def test_a_refused_tile_is_an_error_not_nodata(range_server, tmp_path: Path) -> None:
    _serve_tile(range_server.root)
    range_server.forced_status[f"{TILE}_Map.tif"] = 403
    source = WorldCoverSource(base_url=range_server.url, cache_root=tmp_path / "lc")
    with pytest.raises(TileError, match=f"could not read WorldCover tile {TILE}"):
        grid_bga(_grid(), source, load_weights())
    assert not source.absent_marker(TILE).exists()


def test_an_unreachable_server_is_a_tile_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:          # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    source = WorldCoverSource(base_url=f"http://127.0.0.1:{port}", cache_root=tmp_path / "lc")
    with pytest.raises(TileError, match="could not read WorldCover tile N48E009"):
        grid_bga(_grid(), source, load_weights())
