"""BGA from open-vocabulary segmentation of imagery (``soundmap bga --segmenter clipseg``).

The cross-modal urban sensing study segments each image into its aerial classes (Table 1),
turns the segmentation into the fraction of pixels per class and maps those through the class →
BGA table. soundmap renders each cell's footprint from the imagery source (the same
``tiles``/``render`` code as ``soundmap embed``), segments it with text prompts — one per class of
``soundmap/data/bga_aerial.yaml`` — and applies *the same per-cell rules as the land-cover path*:
the class areas of the footprint (:func:`~soundmap.ecology.bga.class_areas_in_rectangles`, here
the whole rendered image), weights averaged over the valid area only
(:func:`~soundmap.ecology.bga.bga_means`), a cell without imagery is nodata. Since a rendered
cell covers exactly its footprint, pixel fractions are area fractions.

A segmenter is anything with ``segment(images N×H×W×3 uint8, prompts) -> N×H×W`` prompt indices:
CLIPSeg (:class:`soundmap.models.clipseg.CLIPSegSegmenter`) in use, a deterministic one in tests.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import yaml

from ..errors import InputError
from ..geo.grid import Grid
from ..progress import progress
from .bga import ClassWeights, _read_yaml, bga_means, class_areas_in_rectangles, class_indices, parse_weights
from .landcover import GridBGA

AERIAL_TABLE_RESOURCE = "bga_aerial.yaml"
STREET_TABLE_RESOURCE = "bga_street.yaml"
SEGMENTERS = ("worldcover", "clipseg", "segearth-ov")
SEGMENT_CHUNK = 16
"""Cells rendered and segmented at a time (memory stays flat whatever the grid size)."""


class Segmenter(Protocol):
    def segment(self, images: np.ndarray, prompts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class PromptTable:
    """A class → BGA table whose classes also carry the text prompt they are segmented with."""

    table: ClassWeights
    codes: tuple[int, ...]
    prompts: tuple[str, ...]


def load_prompt_table(path: str | os.PathLike | None = None, resource: str = AERIAL_TABLE_RESOURCE) -> PromptTable:
    """The study's aerial (or, with ``resource=STREET_TABLE_RESOURCE``, street-view) table, packaged,
    or a user table of the same schema (``--weights``)."""
    if path is None:
        text = resources.files("soundmap.data").joinpath(resource).read_text(encoding="utf-8")
        data, origin = yaml.safe_load(text), f"packaged BGA table {resource}"
    else:
        data, origin = _read_yaml(path, "BGA weights"), f"BGA weights {Path(path).name}"
    table = parse_weights(data, origin)
    codes = tuple(sorted(table.weights))
    prompts = tuple(str(data["classes"].get(code, data["classes"].get(str(code), {})).get("prompt")
                        or table.names[code]) for code in codes)
    return PromptTable(table=table, codes=codes, prompts=prompts)


def segment_codes(segmenter: Segmenter, images: np.ndarray, prompts: PromptTable) -> np.ndarray:
    """Class codes (N × H × W) of images: the segmenter's prompt indices mapped to table codes."""
    index = np.asarray(segmenter.segment(images, list(prompts.prompts)))
    if index.shape != tuple(np.asarray(images).shape[:3]):
        raise ValueError(f"segmenter returned {index.shape} for images {np.asarray(images).shape}")
    return np.asarray(prompts.codes, dtype=np.int32)[np.clip(index, 0, len(prompts.codes) - 1)]


@dataclass
class ImageBGA:
    """Per-image class proportions (N × K, over valid pixels), BGA means (3 × N) and valid fractions."""

    proportions: np.ndarray
    values: np.ndarray
    valid_fraction: np.ndarray
    codes: list[int]


def class_maps_bga(class_maps: np.ndarray, table: ClassWeights) -> ImageBGA:
    """Area-weighted BGA of whole class maps (each map = one cell footprint), as the land-cover
    path does for its footprints: class areas → Σ area·w / Σ valid area; nodata excluded."""
    maps = np.asarray(class_maps)
    n = maps.shape[0]
    k = len(table.weights)
    areas = np.zeros((n, k))
    weights = np.zeros((k, 3))
    codes: list[int] = []
    for i in range(n):
        index, weights, codes = class_indices(maps[i], table)
        height, width = index.shape
        areas[i] = class_areas_in_rectangles(index, k, np.array([0.0]), np.array([0.0]),
                                             np.array([float(width)]), np.array([float(height)]))[0]
    valid_area = areas.sum(axis=1)
    box = float(maps.shape[1] * maps.shape[2]) if n else 1.0
    proportions = np.divide(areas, valid_area[:, None], out=np.full_like(areas, np.nan),
                            where=valid_area[:, None] > 0)
    return ImageBGA(proportions=proportions, values=bga_means((areas @ weights).T, valid_area),
                    valid_fraction=valid_area / box, codes=codes)


def images_bga(segmenter: Segmenter, images: Sequence[np.ndarray], prompts: PromptTable) -> ImageBGA:
    """Per-image class proportions and BGA of images of any sizes (each segmented on its own)."""
    parts = [class_maps_bga(segment_codes(segmenter, np.asarray(image)[None], prompts), prompts.table)
             for image in images]
    k = len(prompts.codes)
    return ImageBGA(proportions=np.concatenate([p.proportions for p in parts]) if parts else np.zeros((0, k)),
                    values=np.concatenate([p.values for p in parts], axis=1) if parts else np.zeros((3, 0)),
                    valid_fraction=np.concatenate([p.valid_fraction for p in parts]) if parts else np.zeros(0),
                    codes=list(prompts.codes))


def cell_imagery(grid: Grid, source: Any, cache_dir: str | os.PathLike | None,
                 mask: np.ndarray | None = None) -> Any:
    """The tile cache of ``source`` with every tile the (masked) cells need, fetched up front
    (None for a local raster source, which is read directly)."""
    from ..geo.tileplan import tiles_for_grid
    from ..paths import tile_cache_path
    from ..tiles.cache import TileCache
    from ..tiles.fetch import fetch_tiles

    if source.kind == "file":
        return None
    cache = TileCache(tile_cache_path(cache_dir))
    z, tiles = tiles_for_grid(grid, source, mask=mask)
    missing = cache.missing(source.cache_key, sorted((z, x, y) for x, y in tiles))
    if missing:
        fetch_tiles(source, missing, cache)
    return cache


def grid_segmentation_bga(grid: Grid, source: Any, cache: Any, segmenter: Segmenter, prompts: PromptTable,
                          mask: np.ndarray | None = None) -> GridBGA:
    """BGA composite of the (masked) cells of ``grid`` from segmenting their rendered imagery."""
    from ..tiles.render import render_cells

    values = np.full((3, grid.rows, grid.cols), np.nan, dtype=np.float32)
    valid_fraction = np.zeros((grid.rows, grid.cols), dtype=np.float32)
    rows, cols = np.meshgrid(np.arange(grid.rows), np.arange(grid.cols), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    if mask is not None:
        keep = np.asarray(mask)[rows, cols]
        rows, cols = rows[keep], cols[keep]
    for start in progress(range(0, rows.size, SEGMENT_CHUNK), desc="segmenting cells", unit="chunk"):
        r, c = rows[start:start + SEGMENT_CHUNK], cols[start:start + SEGMENT_CHUNK]
        images, ok = render_cells(grid, r, c, source, cache)
        if not ok.any():
            continue
        result = class_maps_bga(segment_codes(segmenter, images[ok], prompts), prompts.table)
        values[:, r[ok], c[ok]] = result.values
        valid_fraction[r[ok], c[ok]] = result.valid_fraction
    return GridBGA(values=values, valid_fraction=valid_fraction, unmapped={})


def check_segmenter(name: str) -> None:
    """``--segmenter`` is one of :data:`SEGMENTERS`; SegEarth-OV is not available (see docs)."""
    if name not in SEGMENTERS:
        raise InputError(f"--segmenter {name!r} is not one of {', '.join(SEGMENTERS)}")
    if name == "segearth-ov":
        raise InputError("--segmenter segearth-ov is not available yet: its SimFeatUp upsampler needs trained "
                         "weights soundmap does not ship; use --segmenter clipseg or worldcover")


def load_segmenter(name: str, device: str = "cpu") -> Segmenter:
    """The segmentation model behind ``--segmenter`` (downloaded on first use)."""
    check_segmenter(name)
    from ..models.clipseg import load_clipseg

    return load_clipseg(device=device)


def make_segmented_bga(grid: Grid, source: Any, segmenter: Segmenter, prompts: PromptTable,
                       out: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                       mask: np.ndarray | None = None, segmenter_name: str = "clipseg") -> Any:
    """``soundmap bga --segmenter clipseg``: fetch the cells' imagery, segment, write the composites
    (the same files and grid as the land-cover path)."""
    from .composite import BGAPaths, BGARun, write_bga_composite

    cache = cell_imagery(grid, source, cache_dir, mask=mask)
    result = grid_segmentation_bga(grid, source, cache, segmenter, prompts, mask=mask)
    description = f"{segmenter_name} segmentation of {getattr(source, 'name', 'imagery')} into the study's aerial classes"
    written = write_bga_composite(grid, result, BGAPaths(Path(out)), table_name=prompts.table.name,
                                  source_description=description,
                                  attribution=str(getattr(source, "attribution", "") or ""))
    return BGARun(grid=grid, result=result, paths=written, unmapped={})
