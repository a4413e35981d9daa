"""The block renderer (torch, one batched bicubic ``grid_sample`` per mosaic) against today's GDAL
cubic per-cell renders, on textured imagery: mean |Δ| ≤ 1 DN and p99 ≤ 8 DN per region, the same
valid cells (missing imagery stays nodata), pre-fusion features of a random-weight full-size
ViT-B/16 within cosine 0.999 per cell; at mid-latitude, at 60°N, astride the antimeridian, with
missing tiles; and ``kind: file`` sources (UTM) take the GDAL path unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from soundmap.geo.bbox import BBox
from soundmap.geo.grid import make_grid
from soundmap.geo.tileplan import cell_tile_outlines, touched_tiles, web_mercator_zoom
from soundmap.tiles.block_render import render_cells_torch
from soundmap.tiles.render import render_cells
from soundmap.tiles.sources import TileSource
from tests.fixtures.textured_tiles import TexturedTiles

from .test_render_file import UTM, encoded_raster, file_source, inner_bbox

SOURCE = TileSource(name="textured", kind="xyz", url="http://127.0.0.1:9/{z}/{x}/{y}.png", max_zoom=14)

REGIONS = {
    "50N": BBox(10.0, 50.0, 10.12, 50.06),
    "60N": BBox(10.0, 60.0, 10.16, 60.05),
    "antimeridian": BBox(179.96, 0.0, 179.9999, 0.03),
}


def _cells(grid, limit: int = 12) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    rows, cols = np.meshgrid(np.arange(grid.rows), np.arange(grid.cols), indexing="ij")
    return rows.ravel()[:limit], cols.ravel()[:limit]


def _both(grid, rows, cols, tiles):  # type: ignore[no-untyped-def]
    old, old_valid = render_cells(grid, rows, cols, SOURCE, tiles)
    new, new_valid = render_cells_torch(grid, rows, cols, SOURCE, tiles, device="cpu")
    assert new.dtype == torch.uint8 and tuple(new.shape) == old.shape
    return old, old_valid, new.numpy(), new_valid


@pytest.mark.parametrize("region", sorted(REGIONS))
def test_block_renders_match_gdal_cubic_on_textured_imagery(region: str) -> None:
    grid = make_grid(REGIONS[region], "sentinel", 1)
    rows, cols = _cells(grid)
    old, old_valid, new, new_valid = _both(grid, rows, cols, TexturedTiles())
    assert old_valid.all() and (new_valid == old_valid).all()
    diff = np.abs(old.astype(np.int16) - new.astype(np.int16))
    assert old.std() > 8, "the imagery must be textured, or the comparison proves nothing"
    assert diff.mean() <= 1.0, f"mean |Δ| {diff.mean():.3f} DN"
    assert np.percentile(diff, 99) <= 8, f"p99 |Δ| {np.percentile(diff, 99)} DN"
    if region == "antimeridian":
        z = web_mercator_zoom(SOURCE, grid)
        tx, _ = cell_tile_outlines(grid, rows, cols, z)
        assert tx.max() > (1 << z) - 0.01 or tx.min() < 0.01, "a cell must reach across ±180°"


def test_missing_tiles_leave_exactly_the_same_cells_without_imagery() -> None:
    grid = make_grid(REGIONS["50N"], "sentinel", 1)
    rows, cols = _cells(grid)
    z = web_mercator_zoom(SOURCE, grid)
    tx, ty = cell_tile_outlines(grid, rows, cols, z)
    cell_idx, tile_x, tile_y = touched_tiles(tx, ty)
    gone = (z, int(tile_x[cell_idx == 0][0]), int(tile_y[cell_idx == 0][0]))   # a tile under cell 0
    old, old_valid, new, new_valid = _both(grid, rows, cols, TexturedTiles(missing={gone}))
    assert not old_valid[0] and old_valid.any() and (new_valid == old_valid).all()
    assert (new[~new_valid] == 0).all(), "nodata stays nodata: never filled"
    diff = np.abs(old.astype(np.int16) - new.astype(np.int16))[new_valid]
    assert diff.mean() <= 1.0 and np.percentile(diff, 99) <= 8


def test_full_size_vit_features_agree_per_cell() -> None:
    """Pre-fusion features (ViT-B/16 + GSD encoding + projector, random weights, released size)
    of the two renders of a few cells: cosine ≥ 0.999 each."""
    from soundmap.models.config import ViTConfig
    from soundmap.models.vit import ImageEncoder
    from soundmap.preprocess.image import eval_transform

    torch.manual_seed(0)
    encoder = ImageEncoder(ViTConfig(), 512).eval()
    grid = make_grid(REGIONS["60N"], "sentinel", 1)
    rows, cols = _cells(grid, limit=3)
    old, _, new, _ = _both(grid, rows, cols, TexturedTiles())
    res = torch.full((len(rows),), 10.0)
    with torch.inference_mode():
        a = encoder(eval_transform(torch.from_numpy(old), device=torch.device("cpu")), res)
        b = encoder(eval_transform(torch.from_numpy(new), device=torch.device("cpu")), res)
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    assert (cosine >= 0.999).all(), cosine.tolist()


def test_file_sources_keep_the_gdal_path(tmp_path: Path) -> None:
    source = file_source(encoded_raster(tmp_path / "utm.tif", UTM))
    grid = make_grid(inner_bbox(UTM, 0.2, 0.6), "sentinel", 1)
    rows, cols = _cells(grid, limit=4)
    old, old_valid = render_cells(grid, rows, cols, source, None)
    new, new_valid = render_cells_torch(grid, rows, cols, source, None)
    assert old_valid.any() and (new_valid == old_valid).all()
    np.testing.assert_array_equal(new.numpy(), old)


@pytest.mark.parametrize("region", ["50N", "antimeridian"])
def test_a_cell_renders_the_same_in_any_group(region: str) -> None:
    """Resumed runs, cluster blocks and one machine group cells differently: a cell's pixels must
    not depend on its neighbours in the call (or on a missing tile that only they need)."""
    grid = make_grid(REGIONS[region], "sentinel", 1)
    rows, cols = _cells(grid)
    tiles = TexturedTiles()
    together, valid = render_cells_torch(grid, rows, cols, SOURCE, tiles)
    assert valid.all()
    for k in (0, len(rows) // 2, len(rows) - 1):
        alone, _ = render_cells_torch(grid, rows[k:k + 1], cols[k:k + 1], SOURCE, tiles)
        assert torch.equal(alone[0], together[k])
    pair, _ = render_cells_torch(grid, rows[1:3], cols[1:3], SOURCE, tiles)
    assert torch.equal(pair, together[1:3])
