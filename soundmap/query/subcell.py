"""Sub-cell concept maps (``soundmap query --subcell``): one value per image token.

Sat2Sound keeps all 196 patch tokens of a cell (a 14 × 14 grid), so a cell of a Sentinel grid
(2.56 km at zoom 1) yields 14 × 14 sub-cells of ~180 m. For every query × metadata setting the
model scores each token (:meth:`Sat2SoundModel.token_scores`) and the values are written as a COG
on a grid 14× finer than the cell grid: same CRS, same origin, pixel size = cell size / 14, so
sub-cell (14·r + i, 14·c + j) is token (i, j) of cell (r, c). Bands and band descriptions follow
the main map (query-major); written as ``<out>_subcell.tif``. The whole region is written (``--bbox``
does not restrict this output). Cells without imagery are nodata (NaN).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..raster.cog import RasterGeometry, ScratchRaster, finalize_cog, gdal_env

SUBCELL_SUFFIX = "_subcell"


def subcell_geometry(grid: Any, factor: int) -> RasterGeometry:
    """The cell grid refined ``factor`` times (same CRS and origin, pixels ``factor``× smaller)."""
    from affine import Affine

    return RasterGeometry(crs=grid.crs, transform=grid.transform @ Affine.scale(1.0 / factor),
                          width=grid.cols * factor, height=grid.rows * factor)


def write_subcell_map(plan: Any, *, model: Any, store: Any) -> Path:
    """Score every token of every embedded cell for each query × setting; return the COG path."""
    from .engine import encode_queries, read_store_block, store_blocks

    if not hasattr(model, "token_scores"):
        raise InputError("--subcell needs a Sat2Sound model (its image tokens); this model scores whole cells only")
    factor = int(model.config.vit.grid_size)
    queries = encode_queries(model, plan.queries)
    grid = store.grid
    dest = plan.outputs.sibling(SUBCELL_SUFFIX)
    descriptions = [f"{q.label} | {s.label}" for q in plan.queries for s in plan.settings]
    with tempfile.TemporaryDirectory(prefix=".subcell.", dir=dest.parent) as scratch_dir, gdal_env():
        scratch_path = Path(scratch_dir) / "subcell.tif"
        with ScratchRaster(scratch_path, subcell_geometry(grid, factor), plan.band_count, "float32",
                           float("nan")) as raster:
            for rows, cols in store_blocks(store, (slice(0, grid.rows), slice(0, grid.cols))):
                _write_block(plan, model, grid, queries, raster, rows, cols, factor, *read_store_block(store, rows, cols))
            raster.describe({"model": str(model.name), "subcell_factor": str(factor),
                             "score": "cosine of each image token's codebook embedding with the query"},
                            descriptions)
        finalize_cog(scratch_path, dest)
    return dest


def _write_block(plan: Any, model: Any, grid: Any, queries: Any, raster: ScratchRaster, rows: slice, cols: slice,
                 factor: int, features: np.ndarray, valid: np.ndarray) -> None:
    """Token maps of one store block's embedded cells, every query × setting band."""
    from rasterio.windows import Window

    from .engine import _metadata

    local_r, local_c = np.nonzero(valid)
    height, width = valid.shape
    window = Window(cols.start * factor, rows.start * factor, width * factor, height * factor)
    for s, setting in enumerate(plan.settings):
        values = np.full((len(plan.queries), height * factor, width * factor), np.nan, np.float32)
        if len(local_r):
            metadata = _metadata(setting, grid, local_r + rows.start, local_c + cols.start)
            maps = model.token_scores(features[local_r, local_c], metadata, queries).cpu().numpy()
            for k, (r, c) in enumerate(zip(local_r, local_c)):
                values[:, r * factor:(r + 1) * factor, c * factor:(c + 1) * factor] = maps[k]
        for q in range(len(plan.queries)):
            raster.write(plan.band_index(q, s), window, values[q])
