"""Builders of categorical rasters with known classes in known places, for the ecology tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from affine import Affine

#: LAEA centred on (10 E, 50 N): its x = 0 axis is the 10 E meridian and y = 0 is 50 N near x = 0.
LAEA_10_50 = "+proj=laea +lat_0=50.000000 +lon_0=10.000000 +x_0=0 +y_0=0 +datum=WGS84 +units=m +no_defs"

#: Hand-written (anthrophony, biophony, geophony) of the WorldCover classes used in the tests.
TREE = (0.0, 1.0, 0.3)
BUILT = (1.0, 0.1, 0.0)
WATER = (0.0, 0.3, 1.0)
CROP = (0.3, 1.0, 0.0)


def write_class_raster(path: Path, classes: np.ndarray, *, crs: str, transform: Affine,
                       nodata: int | None = 0, blocksize: int | None = None, cog: bool = False) -> Path:
    """Write a single-band uint8 class raster (optionally tiled, or a COG via GDAL's COG driver)."""
    profile = dict(driver="GTiff", width=classes.shape[1], height=classes.shape[0], count=1, dtype="uint8",
                   crs=crs, transform=transform, nodata=nodata, compress="deflate")
    if blocksize:
        profile.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
    target = path.with_suffix(".plain.tif") if cog else path
    with rasterio.open(target, "w", **profile) as dst:
        dst.write(classes.astype(np.uint8), 1)
    if cog:
        rasterio.shutil.copy(str(target), str(path), driver="COG", BLOCKSIZE=blocksize or 256,
                             COMPRESS="DEFLATE", OVERVIEWS="NONE")
        target.unlink()
    return path


def mix(*parts: tuple[float, tuple[float, float, float]]) -> tuple[float, float, float]:
    """Area-weighted mean of weight triples given as (fraction, triple); fractions are normalised."""
    total = sum(f for f, _ in parts)
    return tuple(sum(f * w[k] for f, w in parts) / total for k in range(3))  # type: ignore[return-value]


@pytest.fixture
def utm_landcover(tmp_path: Path) -> Path:
    """10 m UTM 32N raster, 300 m × 400 m, origin (500000, 5000300):

    - y 5000200–5000300: tree (10) west of x = 500150, built-up (50) east of it;
    - y 5000000–5000200: water (80) west of 500100, nodata (0) 500100–500250, cropland (40) east.
    """
    classes = np.zeros((30, 40), dtype=np.uint8)
    classes[:10, :15] = 10
    classes[:10, 15:] = 50
    classes[10:, :10] = 80
    classes[10:, 25:] = 40
    return write_class_raster(tmp_path / "utm.tif", classes, crs="EPSG:32632",
                              transform=Affine(10, 0, 500000, 0, -10, 5000300))


@pytest.fixture
def lonlat_landcover(tmp_path: Path) -> Path:
    """0.0001° EPSG:4326 raster around (10 E, 50 N) with quadrants meeting there:
    NW tree (10), NE built-up (50), SW water (80), SE nodata (0)."""
    classes = np.zeros((100, 200), dtype=np.uint8)
    classes[:50, :100] = 10
    classes[:50, 100:] = 50
    classes[50:, :100] = 80
    return write_class_raster(tmp_path / "lonlat.tif", classes, crs="EPSG:4326",
                              transform=Affine(0.0001, 0, 9.99, 0, -0.0001, 50.005))
