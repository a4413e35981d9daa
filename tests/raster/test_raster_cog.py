"""COG writing: georeference, tiling, overviews, tags, nodata, atomicity and all-or-nothing outputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from soundmap.raster.cog import (
    PendingOutputs,
    RasterGeometry,
    ScratchRaster,
    block_windows,
    gdal_env,
    overview_count,
    to_uint8,
    write_cog,
)

GEOMETRY = RasterGeometry(crs="EPSG:3035", transform=Affine(2560.0, 0.0, 4_321_000.0, 0.0, -2560.0, 3_210_000.0),
                          width=70, height=45)


def _values(window) -> np.ndarray:
    rows, cols = np.mgrid[window.row_off:window.row_off + window.height, window.col_off:window.col_off + window.width]
    values = (rows * 1000 + cols).astype(np.float32)
    values[(rows + cols) % 7 == 0] = np.nan  # cells without imagery
    return values


def _check_is_cog(path: Path) -> None:
    with rasterio.open(path) as ds:
        assert ds.driver == "GTiff"
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert ds.profile["tiled"] is True
        assert ds.overviews(1), "a COG must carry internal overviews"


def test_write_cog_roundtrips_values_georeference_and_tags(tmp_path: Path) -> None:
    dest = tmp_path / "out" / "map.tif"
    windows = ((w, _values(w)[None]) for w in block_windows(GEOMETRY.width, GEOMETRY.height, block=16))
    write_cog(dest, windows, geometry=GEOMETRY, count=1, dtype="float32", nodata=float("nan"),
              tags={"model": "tiny", "query": "birds"}, band_descriptions=["text: birds"],
              band_tags=[{"query": "birds"}])
    _check_is_cog(dest)
    with rasterio.open(dest) as ds:
        assert ds.crs.to_epsg() == 3035
        assert ds.transform == GEOMETRY.transform
        assert ds.res == (2560.0, 2560.0)
        assert math.isnan(ds.nodata)
        assert ds.tags()["model"] == "tiny" and ds.tags()["query"] == "birds"
        assert ds.descriptions == ("text: birds",)
        assert ds.tags(1)["query"] == "birds"
        data = ds.read(1)
    from rasterio.windows import Window

    np.testing.assert_array_equal(data, _values(Window(0, 0, GEOMETRY.width, GEOMETRY.height)))
    assert [p.name for p in dest.parent.iterdir()] == ["map.tif"]  # no temp files left


def test_scratch_raster_accepts_windows_in_any_order(tmp_path: Path) -> None:
    windows = list(block_windows(GEOMETRY.width, GEOMETRY.height, block=20))[::-1]
    with gdal_env(), ScratchRaster(tmp_path / "s.tif", GEOMETRY, 2, "float32", float("nan")) as scratch:
        for window in windows:
            scratch.write(2, window, _values(window) + 1)
            scratch.write(1, window, _values(window))
        whole = next(iter(block_windows(GEOMETRY.width, GEOMETRY.height, block=1000)))
        np.testing.assert_array_equal(scratch.read(2, whole), _values(whole) + 1)


def test_overview_count_gives_small_rasters_one_level_and_large_ones_down_to_a_tile() -> None:
    assert overview_count(1, 1) == 0
    assert overview_count(10, 7) == 1
    assert overview_count(512, 300) == 1
    assert overview_count(4096, 1000) == 3  # 4096 -> 2048 -> 1024 -> 512


def test_pending_outputs_appear_together_or_not_at_all(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch.tif"
    with gdal_env(), ScratchRaster(scratch, GEOMETRY, 1, "float32", float("nan")) as raster:
        for window in raster.windows():
            raster.write(1, window, _values(window))
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with PendingOutputs() as pending:
            pending.cog(scratch, out / "a.tif")
            pending.cog(scratch, out / "b.tif")
            raise KeyboardInterrupt
    assert list(out.iterdir()) == []
    with PendingOutputs() as pending:
        pending.cog(scratch, out / "a.tif")
        pending.cog(scratch, out / "b.tif")
        assert not (out / "a.tif").exists() and not (out / "b.tif").exists()  # only temporaries so far
    assert sorted(p.name for p in out.iterdir()) == ["a.tif", "b.tif"]
    _check_is_cog(out / "a.tif")
    assert (out / "a.tif").stat().st_mode & 0o044  # readable by others, not a private temp file


def test_uint8_encoding_reserves_zero_for_nodata() -> None:
    out = to_uint8(np.array([0.0, 0.5, 1.0, np.nan]))
    # 1 + round(v * 254): 1, 128, 255; NaN -> 0
    assert out.tolist() == [1, 128, 255, 0]


def test_uint8_cog_with_zero_nodata(tmp_path: Path) -> None:
    values = np.arange(3 * 45 * 70, dtype=np.uint8).reshape(3, 45, 70)
    from rasterio.windows import Window

    write_cog(tmp_path / "rgb.tif", iter([(Window(0, 0, 70, 45), values)]), geometry=GEOMETRY, count=3,
              dtype="uint8", nodata=0, tags={}, resampling="average")
    _check_is_cog(tmp_path / "rgb.tif")
    with rasterio.open(tmp_path / "rgb.tif") as ds:
        assert ds.count == 3 and ds.dtypes == ("uint8",) * 3 and ds.nodata == 0
        np.testing.assert_array_equal(ds.read(), values)
