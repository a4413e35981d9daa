"""Web-map tiles of score grids: which cell each pixel of a 256 px web-mercator tile shows, then
colour it.

A query's scores live on the workspace grid (a projected CRS, one pixel per cell). A slippy map
asks for web-mercator tiles, so every tile needs a reprojection. The grid never changes while the
explorer runs, only the values on it do, so the reprojection is done once per tile — the cell
index of each of its 256 × 256 pixel centres (nearest cell: a cell is the data, nothing is
interpolated) — and kept in a bounded cache; a tile of a new query is then an index lookup, a
colour map and a PNG encode (a few milliseconds). Colour maps and their application come from
rio-tiler (the maintained raster-tiling library); the PNG is written by Pillow at a low
compression level because encode time, not size, bounds a loopback tile's latency.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

TILE_SIZE = 256
WEB_MERCATOR_HALF = 20037508.342789244
INDEX_CACHE_TILES = 256
"""Tile index maps kept (256 KB each): enough for several screens of tiles at every zoom."""

COLORMAPS: tuple[str, ...] = ("magma", "viridis", "inferno", "plasma", "cividis", "turbo", "greys")


class TileIndex:
    """Cell index (flat, −1 outside the grid) of every pixel of web-mercator tiles, cached."""

    def __init__(self, grid: Any) -> None:
        self.grid = grid
        self._cache: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._local = threading.local()

    def _transformer(self) -> Any:
        """Web mercator → grid CRS (one per thread: pyproj transformers are not shared across threads)."""
        if not hasattr(self._local, "transformer"):
            from pyproj import CRS, Transformer

            self._local.transformer = Transformer.from_crs(CRS.from_epsg(3857), CRS.from_user_input(self.grid.crs),
                                                           always_xy=True)
        return self._local.transformer

    def get(self, z: int, x: int, y: int) -> np.ndarray:
        key = (z, x, y)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        index = self._compute(z, x, y)
        with self._lock:
            self._cache[key] = index
            while len(self._cache) > INDEX_CACHE_TILES:
                self._cache.popitem(last=False)
        return index

    def _compute(self, z: int, x: int, y: int) -> np.ndarray:
        size = 2 * WEB_MERCATOR_HALF / (2 ** z)
        pixel = size / TILE_SIZE
        offsets = (np.arange(TILE_SIZE) + 0.5) * pixel
        mx = -WEB_MERCATOR_HALF + x * size + offsets
        my = WEB_MERCATOR_HALF - y * size - offsets
        grid_x, grid_y = self._transformer().transform(*np.meshgrid(mx, my))
        grid = self.grid
        col = np.floor((np.asarray(grid_x) - grid.x0) / grid.stride)
        row = np.floor((grid.y0 - np.asarray(grid_y)) / grid.stride)
        inside = (row >= 0) & (row < grid.rows) & (col >= 0) & (col < grid.cols) & np.isfinite(row) & np.isfinite(col)
        flat = np.where(inside, row * grid.cols + col, -1)
        return flat.astype(np.int64 if grid.rows * grid.cols >= 2**31 else np.int32)

    def intersects(self, z: int, x: int, y: int) -> bool:
        return bool((self.get(z, x, y) >= 0).any())


def sample(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The grid's values at a tile's pixels (NaN outside the grid)."""
    flat = values.reshape(-1)
    out = flat[np.clip(index, 0, None)].astype(np.float32, copy=False)
    return np.where(index >= 0, out, np.nan)


def scaled_uint8(values: np.ndarray, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """Values → 1..255 on [low, high] (clipped), and the mask of pixels that have a value."""
    valid = np.isfinite(values)
    span = (high - low) if high > low else 1.0
    scaled = np.clip((np.nan_to_num(values, nan=low) - low) / span, 0.0, 1.0)
    return (1 + np.round(scaled * 254)).astype(np.uint8), valid


def colormap_lut(name: str) -> np.ndarray:
    """A 256 × 4 uint8 lookup table of rio-tiler's colour map ``name``."""
    from rio_tiler.colormap import cmap

    table = cmap.get(name)
    return np.array([table[i] for i in range(256)], dtype=np.uint8)


_LUTS: dict[str, np.ndarray] = {}


def lut(name: str) -> np.ndarray:
    if name not in _LUTS:
        _LUTS[name] = colormap_lut(name)
    return _LUTS[name]


def heatmap_rgba(values: np.ndarray, low: float, high: float, colormap: str) -> np.ndarray:
    """One layer through a colour map; transparent where there is no value."""
    from rio_tiler.colormap import apply_cmap

    data, valid = scaled_uint8(values, low, high)
    rgb, _ = apply_cmap(data[None], {i: tuple(int(v) for v in row) for i, row in enumerate(lut(colormap))})
    alpha = np.where(valid, 255, 0).astype(np.uint8)
    return np.dstack([np.moveaxis(rgb, 0, -1), alpha])


def composite_rgba(layers: list[np.ndarray], ranges: list[tuple[float, float]]) -> np.ndarray:
    """Three layers as red, green, blue, each on its own range (as ``--rgb``)."""
    channels, valid = [], None
    for values, (low, high) in zip(layers, ranges):
        data, ok = scaled_uint8(values, low, high)
        channels.append(data)
        valid = ok if valid is None else valid & ok
    alpha = np.where(valid, 255, 0).astype(np.uint8)
    return np.dstack([*channels, alpha])


def encode_png(rgba: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def empty_tile() -> bytes:
    return encode_png(np.zeros((TILE_SIZE, TILE_SIZE, 4), np.uint8))


def image_media_type(data: bytes) -> str:
    """The media type of a cached imagery tile, from its magic bytes."""
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"
