"""Raster outputs: streaming Cloud-Optimised GeoTIFF writing (atomic, flat memory) and previews."""

from __future__ import annotations

from .cog import PendingOutputs, RasterGeometry, ScratchRaster, finalize_cog, write_cog

__all__ = ["PendingOutputs", "RasterGeometry", "ScratchRaster", "finalize_cog", "write_cog"]
