"""Imagery tiles: sources (tiles.yaml), the SQLite tile cache, the parallel fetcher, cell rendering.

Names are imported lazily so that importing one submodule (e.g. the cache inside a dask worker)
does not pull in requests, rasterio or PIL.
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_LAZY = {
    "TileSource": "soundmap.tiles.sources:TileSource",
    "load_sources": "soundmap.tiles.sources:load_sources",
    "resolve_source": "soundmap.tiles.sources:resolve_source",
    "TileCache": "soundmap.tiles.cache:TileCache",
    "fetch_tiles": "soundmap.tiles.fetch:fetch_tiles",
    "FetchReport": "soundmap.tiles.fetch:FetchReport",
    "RetryPolicy": "soundmap.tiles.fetch:RetryPolicy",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
