"""Web-map tiles of score grids: which cell each pixel of a 256 px web-mercator tile shows, then
colour it.

A query's scores live on the workspace grid (a projected CRS, one pixel per cell). A slippy map
asks for web-mercator tiles, so every tile needs a reprojection. The grid never changes while the
explorer runs, only the values on it do, so the reprojection is done once per tile — the cell
index of each of its 256 × 256 pixel centres (nearest cell: a cell is the data, nothing is
interpolated) — and kept in a bounded cache; a tile of a new query is then an index lookup, a
colour lookup and a PNG encode (a couple of milliseconds): values are turned into 8-bit colour
codes once per result and scale, and a one-layer tile is a palette PNG (one byte a pixel). The
colour maps are rio-tiler's (the maintained raster-tiling library); its per-request GDAL warp is
not used, because the lookup above is what a fixed grid allows. Pillow writes the PNGs at a low
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


def coded(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """A grid's values as colour codes, flat, with one extra trailing 0: 0 = no value, 1..255 =
    [low, high] (clipped). A tile's index −1 (outside the grid) then picks the trailing 0, so a
    tile is one lookup ``codes[index]``. Computed once per result and scale, shared by its tiles."""
    flat = np.asarray(values, dtype=np.float32).reshape(-1)
    valid = np.isfinite(flat)
    span = (high - low) if high > low else 1.0
    scaled = np.clip((np.where(valid, flat, low) - low) / span, 0.0, 1.0)
    codes = np.zeros(flat.size + 1, np.uint8)
    codes[:-1] = np.where(valid, 1 + np.round(scaled * 254), 0).astype(np.uint8)
    return codes


def colormap_lut(name: str) -> np.ndarray:
    """A 256 × 4 uint8 table of rio-tiler's colour map ``name``."""
    from rio_tiler.colormap import cmap

    table = cmap.get(name)
    return np.array([table[i] for i in range(256)], dtype=np.uint8)


_PALETTES: dict[str, bytes] = {}


def palette(name: str) -> bytes:
    """The PNG palette of colour map ``name`` for codes 0..255 (code 0 is made transparent).

    Codes 1..255 take the colour map's entries spread over its 256 colours."""
    if name not in _PALETTES:
        lut = colormap_lut(name)
        positions = np.concatenate([[0], np.round(np.linspace(0, 255, 255)).astype(int)])
        _PALETTES[name] = lut[positions, :3].astype(np.uint8).tobytes()
    return _PALETTES[name]


def colour_tile(codes: np.ndarray, index: np.ndarray, colormap: str) -> bytes:
    """One layer's tile: a palette PNG (1 byte a pixel, so it encodes in about a millisecond)."""
    from PIL import Image

    image = Image.fromarray(codes[index], mode="P")
    image.putpalette(palette(colormap))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1, transparency=0)
    return buffer.getvalue()


def composite_tile(codes: list[np.ndarray], index: np.ndarray) -> bytes:
    """Three layers as red, green, blue, each on its own range (as ``--rgb``); transparent where
    any has no value."""
    channels = [layer[index] for layer in codes]
    alpha = np.where((channels[0] > 0) & (channels[1] > 0) & (channels[2] > 0), 255, 0).astype(np.uint8)
    return encode_png(np.dstack([*channels, alpha]))


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
