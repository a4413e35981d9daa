"""Where a training sample's satellite image at a PSM zoom level comes from.

In order of preference: an image already rendered for that zoom (``zoom_images``: WebDataset
``z{l}.jpg`` members or manifest ``image_z{l}`` columns); the large source tile centre-cropped
to the zoom level (the authors' shards, a manifest ``image`` column); or, for a manifest with no
imagery at all, a cell rendered by soundmap's own tiles code centred on the recording
(:class:`TileImageProvider`), the same renderer the maps use, so training and mapping see
identically prepared pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch

from ..errors import InputError
from ..families import get_family
from .samples import TrainSample

ImageProvider = Callable[[TrainSample, int], np.ndarray]


@lru_cache(maxsize=4096)
def load_image_file(path: str) -> np.ndarray:
    """An image file → H × W × 3 uint8 (cached: small datasets reread the same files each epoch;
    callers must not modify the returned array)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            out = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None
    return out


def zoom_from_source(source_image: np.ndarray, zoom: int, family: str) -> torch.Tensor:
    """The zoom-level image of a large source tile: centre crop (zoom × tile_px), resized to
    tile_px (bicubic, antialias) by the models' preprocessing (psm-reference "Image preprocessing").

    Returns 3 × tile_px × tile_px float in [0, 1] (no uint8 round trip, as the reference keeps
    the zoom-level image in float before the training/eval transform)."""
    from ..preprocess.image import to_float_nchw, zoom_crop

    tile_px = get_family(family).tile_px
    size = zoom * tile_px
    h, w = source_image.shape[:2]
    if h >= size and w >= size:  # crop the uint8 array first: zoom 1 needs 1/25 of a 1280 px tile
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
        source_image = source_image[top:top + size, left:left + size]
    return zoom_crop(to_float_nchw(source_image), zoom, tile_px)[0]


def image_for(sample: TrainSample, zoom: int, family: str, provider: ImageProvider | None = None) -> np.ndarray | torch.Tensor:
    """The sample's image at ``zoom`` (H × W × 3 uint8, or 3 × H × W float in [0, 1])."""
    if zoom in sample.zoom_images:
        return sample.zoom_images[zoom]
    if sample.source_image is not None:
        return zoom_from_source(sample.source_image, zoom, family)
    if provider is not None:
        return provider(sample, zoom)
    raise InputError(f"sample {sample.key!r} has no imagery for zoom {zoom}; give image columns in the "
                     "manifest or a --tiles source to render them")


class TileImageProvider:
    """Renders the cell centred on a recording with soundmap's grid + tile renderer.

    A one-cell :class:`~soundmap.geo.grid.Grid` in a Lambert azimuthal equal-area CRS centred on
    the recording, with the family's footprint for the zoom level, is rendered from the tile
    source through the shared tile cache (tiles are fetched on first use).
    """

    def __init__(self, source_spec: str, family: str, cache_dir: str | None = None, fetch: bool = True) -> None:
        from ..tiles.sources import resolve_source

        self.family = get_family(family).name
        self.source = resolve_source(source_spec, family=self.family)
        self.cache = None
        if self.source.kind != "file":  # rasters are read directly; web tiles go through the cache
            from ..paths import tile_cache_path
            from ..tiles.cache import TileCache

            self.cache = TileCache(tile_cache_path(cache_dir))
        self.fetch = fetch

    def grid_at(self, lat: float, lon: float, zoom: int):  # -> Grid
        from ..geo.grid import Grid

        footprint = get_family(self.family).footprint_m(zoom)
        crs = (f"+proj=laea +lat_0={lat:.8f} +lon_0={lon:.8f} +x_0=0 +y_0=0 "
               "+datum=WGS84 +units=m +no_defs")
        return Grid(crs=crs, x0=-footprint / 2, y0=footprint / 2, stride=footprint, footprint=footprint,
                    rows=1, cols=1, zoom=zoom, family=self.family)

    def __call__(self, sample: TrainSample, zoom: int) -> np.ndarray:
        if sample.lat is None or sample.lon is None:
            raise InputError(f"sample {sample.key!r} has no location to render imagery at")
        grid = self.grid_at(sample.lat, sample.lon, zoom)
        if self.fetch and self.cache is not None:
            from ..geo.tileplan import tiles_for_grid
            from ..tiles.fetch import fetch_tiles

            z, xys = tiles_for_grid(grid, self.source)
            missing = self.cache.missing(self.source.cache_key, [(z, x, y) for x, y in xys])
            if missing:
                fetch_tiles(self.source, missing, self.cache)
        from ..tiles.render import render_cell

        return render_cell(grid, 0, 0, self.source, self.cache).pixels
