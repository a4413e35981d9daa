"""Rendering straight from a local raster (``kind: file``) in a CRS other than the grid's: a UTM
(and a lon/lat) GeoTIFF whose pixels encode their own row and column."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.enums import Resampling

from soundmap.errors import TileError
from soundmap.geo.bbox import BBox
from soundmap.geo.grid import Grid, make_grid
from soundmap.geo.tileplan import tiles_for_grid
from soundmap.tiles.render import render_cell, render_cells
from soundmap.tiles.sources import TileSource


@dataclass(frozen=True)
class RasterSpec:
    """A square raster: upper-left (x0, y0), pixel size, in ``crs`` units."""

    crs: str
    x0: float
    y0: float
    pixel: float
    size: int = 900

    @property
    def span(self) -> float:
        return self.size * self.pixel


UTM = RasterSpec("EPSG:32632", 495_000.0, 5_322_000.0, 10.0)     # 9 km of 10 m pixels, UTM 32N
LONLAT = RasterSpec("EPSG:4326", 8.95, 48.05, 0.0001)             # 0.09° of 0.0001° pixels


def encoded_raster(path: Path, spec: RasterSpec) -> Path:
    """R = col % 256, G = row % 256, B = 16·(row // 256) + col // 256."""
    row, col = np.mgrid[0:spec.size, 0:spec.size]
    bands = np.stack([col % 256, row % 256, 16 * (row // 256) + col // 256]).astype(np.uint8)
    profile = dict(driver="GTiff", width=spec.size, height=spec.size, count=3, dtype="uint8", crs=spec.crs,
                   transform=Affine(spec.pixel, 0, spec.x0, 0, -spec.pixel, spec.y0),
                   tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(bands)
    return path


def file_source(path: Path) -> TileSource:
    return TileSource(name="test-file", kind="file", url=str(path), min_zoom=0, max_zoom=0, tile_size=256,
                      family="sentinel")


def inner_bbox(spec: RasterSpec, lo: float, hi: float) -> BBox:
    """The lon/lat bbox of the raster's fraction lo..hi (of its span) in both axes."""
    xs = [spec.x0 + lo * spec.span, spec.x0 + hi * spec.span]
    ys = [spec.y0 - hi * spec.span, spec.y0 - lo * spec.span]
    lon, lat = Transformer.from_crs(spec.crs, "EPSG:4326", always_xy=True).transform(xs, ys)
    return BBox(min(lon), min(lat), max(lon), max(lat))


def footprint_in_raster(grid: Grid, row: int, col: int, spec: RasterSpec) -> bool:
    minx, miny, maxx, maxy = grid.cell_bounds(row, col)
    t = np.linspace(0, 1, 30)
    xs = np.concatenate([minx + (maxx - minx) * t, np.full_like(t, maxx), minx + (maxx - minx) * t, np.full_like(t, minx)])
    ys = np.concatenate([np.full_like(t, miny), miny + (maxy - miny) * t, np.full_like(t, maxy), miny + (maxy - miny) * t])
    e, n = Transformer.from_crs(grid.crs, spec.crs, always_xy=True).transform(xs, ys)
    return bool(np.all((e > spec.x0) & (e < spec.x0 + spec.span) & (n < spec.y0) & (n > spec.y0 - spec.span)))


@pytest.mark.parametrize("spec", [UTM, LONLAT], ids=["utm", "lonlat"])
def test_file_source_cells_show_the_right_raster_pixels(tmp_path: Path, spec: RasterSpec) -> None:
    source = file_source(encoded_raster(tmp_path / "raster.tif", spec))
    grid = make_grid(inner_bbox(spec, 0.3, 1.0), "sentinel", 1)   # overhangs the east and south edges
    assert tiles_for_grid(grid, source) == (None, set())   # nothing to download
    rows, cols = np.meshgrid(np.arange(grid.rows), np.arange(grid.cols), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    images, valid = render_cells(grid, rows, cols, source, None, resampling=Resampling.nearest)
    inside = np.array([footprint_in_raster(grid, int(r), int(c), spec) for r, c in zip(rows, cols)])
    assert inside.sum() >= 2 and not inside.all()
    np.testing.assert_array_equal(valid, inside)
    to_raster = Transformer.from_crs(grid.crs, spec.crs, always_xy=True)
    checked = 0
    for k in np.flatnonzero(valid):
        minx, _, _, maxy = grid.cell_bounds(int(rows[k]), int(cols[k]))
        idx = np.linspace(0, 255, 12).round().astype(int)
        ii, jj = np.meshgrid(idx, idx, indexing="ij")
        e, n = to_raster.transform(minx + (jj.ravel() + 0.5) * 10.0, maxy - (ii.ravel() + 0.5) * 10.0)
        fc, fr = (np.asarray(e) - spec.x0) / spec.pixel, (spec.y0 - np.asarray(n)) / spec.pixel
        clear = (np.minimum(fc % 1, 1 - fc % 1) > 0.2) & (np.minimum(fr % 1, 1 - fr % 1) > 0.2)
        c_i, r_i = np.floor(fc).astype(int), np.floor(fr).astype(int)
        expected = np.stack([c_i % 256, r_i % 256, 16 * (r_i // 256) + c_i // 256], axis=-1)
        got = images[k][ii.ravel(), jj.ravel()]
        np.testing.assert_array_equal(got[clear], expected[clear])
        checked += int(clear.sum())
    assert checked > 50
    assert not images[~valid].any()


def test_file_source_coarse_zoom_reads_a_decimated_window(tmp_path: Path) -> None:
    source = file_source(encoded_raster(tmp_path / "utm.tif", UTM))
    grid = make_grid(inner_bbox(UTM, 0.45, 0.55), "sentinel", 3)   # one 7.68 km cell around the centre
    image = render_cell(grid, 0, 0, source, None)
    assert image.pixels.shape == (256, 256, 3)
    # blue counts 256-px raster blocks (0..3 each way): the cell spans several, north-west lowest
    blue = image.pixels[..., 2].astype(int)
    assert blue[5, 5] < blue[-5, -5]
    assert len(np.unique(blue)) >= 4


def test_cell_outside_the_raster_is_invalid_and_render_cell_says_so(tmp_path: Path) -> None:
    source = file_source(encoded_raster(tmp_path / "utm.tif", UTM))
    grid = make_grid(inner_bbox(UTM, 3.0, 3.3), "sentinel", 1)
    _, valid = render_cells(grid, [0], [0], source, None)
    assert not valid[0]
    with pytest.raises(TileError, match="outside the raster"):
        render_cell(grid, 0, 0, source, None)


def test_unusable_rasters_are_one_line_tile_errors(tmp_path: Path) -> None:
    grid = make_grid(inner_bbox(UTM, 0.2, 0.5), "sentinel", 1)
    with pytest.raises(TileError, match="does not exist"):
        render_cells(grid, [0], [0], file_source(tmp_path / "absent.tif"), None)
    path = tmp_path / "float.tif"
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=3, dtype="float32", crs=UTM.crs,
                       transform=Affine(10.0, 0, UTM.x0, 0, -10.0, UTM.y0)) as dst:
        dst.write(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(TileError, match="8-bit") as info:
        render_cells(grid, [0], [0], file_source(path), None)
    assert "\n" not in str(info.value)


def test_masked_pixels_of_the_raster_make_the_cell_invalid(tmp_path: Path) -> None:
    """An RGBA raster whose alpha is 0 in the west half: cells there have no imagery."""
    spec = UTM
    rgba = np.full((4, spec.size, spec.size), 120, dtype=np.uint8)
    rgba[3] = 255
    rgba[3, :, : spec.size // 2] = 0
    path = tmp_path / "rgba.tif"
    with rasterio.open(path, "w", driver="GTiff", width=spec.size, height=spec.size, count=4, dtype="uint8",
                       crs=spec.crs, transform=Affine(spec.pixel, 0, spec.x0, 0, -spec.pixel, spec.y0),
                       photometric="RGB", alpha="YES") as dst:
        dst.write(rgba)
    source = file_source(path)
    west = make_grid(inner_bbox(spec, 0.2, 0.3), "sentinel", 1)     # a cell inside the masked half
    east = make_grid(inner_bbox(spec, 0.7, 0.8), "sentinel", 1)     # a cell inside the visible half
    assert not render_cells(west, [0], [0], source, None)[1][0]
    pixels, valid = render_cells(east, [0], [0], source, None)
    assert valid[0] and (pixels[0] == 120).all()
