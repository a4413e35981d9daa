"""The land-cover BGA composite as files, and its comparison with a learned composite.

``bga.tif`` (float32, 3 bands A/B/G in 0–1, NaN = nodata) and ``bga_rgb.tif`` (uint8, 0 = nodata)
are written on exactly the grid of ``soundmap query`` outputs (one pixel per cell, same CRS and
transform), through :mod:`soundmap.raster.cog`. ``--compare`` writes ``bga_compare.json`` and a
side-by-side ``bga_compare.png``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from rasterio.windows import Window

from ..atomic import atomic_path, write_text_atomic
from ..errors import InputError
from ..geo.grid import Grid, subgrid, window_for_bbox
from ..raster.cog import RasterGeometry, gdal_env, to_uint8, write_cog
from .bga import BANDS
from .landcover import GridBGA
from .stats import BandCorrelation, band_correlations

if TYPE_CHECKING:
    from .bga import ClassWeights
    from .landcover import LandCoverSource

BAND_TITLES: tuple[str, str, str] = ("Anthrophony", "Biophony", "Geophony")


@dataclass(frozen=True)
class BGAPaths:
    """Every file a ``soundmap bga`` call may write, derived from ``--out`` (``bga.tif``)."""

    out: Path

    def sibling(self, suffix: str, ext: str = ".tif") -> Path:
        return self.out.with_name(f"{self.out.stem}{suffix}{ext}")

    @property
    def rgb(self) -> Path:
        return self.sibling("_rgb")

    @property
    def learned(self) -> Path:
        return self.sibling("_learned")

    @property
    def compare_json(self) -> Path:
        return self.sibling("_compare", ".json")

    @property
    def compare_png(self) -> Path:
        return self.sibling("_compare", ".png")


def grid_of_raster(path: str | os.PathLike, *, footprint: float | None = None, zoom: int = 1,
                   family: str = "sentinel") -> Grid:
    """The cell grid a north-up, square-pixel raster is drawn on (``--learned FILE``).

    One pixel is one cell; ``footprint`` defaults to the pixel size (cells that tile the raster),
    callers pass the workspace's footprint when the raster came from ``soundmap query``.
    """
    try:
        with gdal_env(), rasterio.open(path) as src:
            transform, crs, width, height = src.transform, src.crs, src.width, src.height
    except rasterio.errors.RasterioIOError as err:
        raise InputError(f"{path} is not a raster GDAL can read ({str(err).splitlines()[0]})") from None
    if crs is None:
        raise InputError(f"{path} has no CRS; the learned composite must be a georeferenced GeoTIFF")
    if transform.b != 0 or transform.d != 0 or transform.e >= 0 or not math.isclose(transform.a, -transform.e, rel_tol=1e-9):
        raise InputError(f"{path} is not a north-up raster with square pixels; write it on the query grid")
    return Grid(crs=crs.to_string(), x0=transform.c, y0=transform.f, stride=transform.a,
                footprint=float(footprint or transform.a), rows=height, cols=width, zoom=zoom, family=family)


def write_bga_composite(grid: Grid, result: GridBGA, paths: BGAPaths, *, table_name: str,
                        source_description: str, attribution: str) -> list[Path]:
    """Write the float32 and uint8 composites on ``grid``; returns the paths written."""
    geometry = RasterGeometry.from_grid(grid)
    window = Window(0, 0, grid.cols, grid.rows)
    tags = {"soundmap_product": "bga", "bands": "R=Anthrophony G=Biophony B=Geophony",
            "bga_table": table_name, "landcover": source_description, "attribution": attribution,
            "method": "area-weighted mean of class weights over each cell footprint; nodata excluded",
            "cell_footprint_m": f"{grid.footprint:g}"}
    band_tags = [{"bga_band": band} for band in BANDS]
    values = np.asarray(result.values, dtype=np.float32)
    written = [write_cog(paths.out, iter([(window, values)]), geometry=geometry, count=3, dtype="float32",
                         nodata=float("nan"), tags=tags, band_descriptions=BAND_TITLES, band_tags=band_tags)]
    written.append(write_cog(paths.rgb, iter([(window, to_uint8(values))]), geometry=geometry, count=3,
                             dtype="uint8", nodata=0, tags={**tags, "scale": "1 + 254 * value; 0 = nodata"},
                             band_descriptions=BAND_TITLES, band_tags=band_tags))
    return written


def read_three_bands(path: str | os.PathLike, what: str) -> tuple[np.ndarray, Any, Any]:
    """Bands 1–3 of a raster as float64 (nodata → NaN), with its transform and CRS."""
    try:
        with gdal_env(), rasterio.open(path) as src:
            if src.count < 3:
                raise InputError(f"{what} {path} has {src.count} band(s); it needs three (R, G, B = A, B, G)")
            data = src.read([1, 2, 3], masked=True).astype(np.float64)
            return np.ma.filled(data, np.nan), src.transform, src.crs
    except rasterio.errors.RasterioIOError as err:
        raise InputError(f"{what} {path} is not a raster GDAL can read ({str(err).splitlines()[0]})") from None


@dataclass
class Comparison:
    """Per-band agreement of a learned composite with the land-cover composite."""

    bands: list[BandCorrelation]
    queries: list[str]
    learned: str
    bga: str
    attribution: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"learned": self.learned, "bga": self.bga, "queries": self.queries, "attribution": self.attribution,
                "bands": {c.band: c.to_dict() for c in self.bands},
                "note": "Pearson and Spearman over cells valid in both rasters; no parametric p-value "
                        "because neighbouring cells are spatially autocorrelated"}


def compare_composites(learned_path: str | os.PathLike, bga_path: str | os.PathLike, paths: BGAPaths, *,
                       queries: list[str] | None = None, attribution: str = "") -> Comparison:
    """Correlate each learned band with the matching BGA band; write JSON and a side-by-side PNG.

    Band k of the learned raster is compared with BGA band k (R/G/B = A/B/G), so the three queries
    must be given in that order (e.g. "traffic and people", "birds and insects", "wind and water").
    """
    learned, l_transform, l_crs = read_three_bands(learned_path, "learned composite")
    bga, b_transform, b_crs = read_three_bands(bga_path, "BGA composite")
    if learned.shape != bga.shape or not l_transform.almost_equals(b_transform) or l_crs != b_crs:
        raise InputError(f"learned composite {learned_path} is not on the BGA grid (shape {learned.shape[1:]} vs "
                         f"{bga.shape[1:]}); compare rasters written on the same workspace grid")
    result = Comparison(bands=band_correlations(learned, bga, BANDS), queries=list(queries or []),
                        learned=str(learned_path), bga=str(bga_path), attribution=attribution)
    write_text_atomic(paths.compare_json, json.dumps(result.to_dict(), indent=2) + "\n")
    render_comparison_png(learned, bga, result, paths.compare_png, attribution=attribution)
    return result


def stretch_rgb(bands: np.ndarray) -> np.ndarray:
    """3 × H × W → H × W × 4 float RGBA for display: each band min–max stretched, nodata transparent."""
    out = np.zeros((*bands.shape[1:], 4), dtype=np.float64)
    valid = np.all(np.isfinite(bands), axis=0)
    for k in range(3):
        band = bands[k]
        finite = band[valid]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        span = hi - lo if hi > lo else 1.0
        out[..., k] = np.where(valid, (np.nan_to_num(band, nan=lo) - lo) / span, 0.0)
    out[..., 3] = valid
    return np.clip(out, 0.0, 1.0)


def render_comparison_png(learned: np.ndarray, bga: np.ndarray, comparison: Comparison, dest: Path, *,
                          attribution: str = "") -> Path:
    """Learned RGB | land-cover BGA RGB, then one scatter per band with its r (matplotlib Agg)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 7), dpi=90)
    grid = fig.add_gridspec(2, 3, height_ratios=[1.4, 1])
    left = fig.add_subplot(grid[0, 0])
    right = fig.add_subplot(grid[0, 1])
    summary = fig.add_subplot(grid[0, 2])
    summary.axis("off")
    lines = [f"{q}" for q in comparison.queries] or ["learned: " + Path(comparison.learned).name]
    summary.text(0.0, 0.9, "queries (R, G, B):\n" + "\n".join(lines), fontsize=8, va="top", wrap=True)
    for ax, data, title in ((left, learned, "learned (R/G/B = queries 1/2/3)"),
                            (right, bga, "land cover BGA (R/G/B = A/B/G)")):
        ax.imshow(stretch_rgb(data), interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    valid = np.all(np.isfinite(learned), axis=0) & np.all(np.isfinite(bga), axis=0)
    colours = ("tab:red", "tab:green", "tab:blue")
    for k, corr in enumerate(comparison.bands):
        ax = fig.add_subplot(grid[1, k])
        ax.scatter(bga[k][valid], learned[k][valid], s=4, alpha=0.5, color=colours[k])
        r = "n/a" if math.isnan(corr.pearson) else f"{corr.pearson:.3f}"
        rho = "n/a" if math.isnan(corr.spearman) else f"{corr.spearman:.3f}"
        ax.set_title(f"{BAND_TITLES[k]}: r={r}, ρ={rho}", fontsize=9)
        ax.set_xlabel("land cover weight", fontsize=8)
        ax.set_ylabel("learned score", fontsize=8)
        ax.tick_params(labelsize=7)
    if attribution:
        fig.text(0.01, 0.005, attribution, fontsize=6, color="0.3")
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.08, top=0.95, wspace=0.3, hspace=0.3)
    with atomic_path(dest, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, format="png")
    return dest


# --------------------------------------------------------------------------- the `bga` workflow
def landcover_source(landcover: str | os.PathLike | None, *, year: int = 2021, base_url: str | None = None,
                     cache_dir: str | os.PathLike | None = None) -> "LandCoverSource":
    """``--landcover FILE`` (any categorical raster), else ESA WorldCover of ``year`` over HTTP."""
    from .. import paths as soundmap_paths
    from .landcover import LocalRasterSource, WorldCoverSource

    if landcover is not None:
        return LocalRasterSource(landcover)
    return WorldCoverSource(year=year, base_url=base_url, cache_root=soundmap_paths.cache_dir(cache_dir) / "landcover")


def class_table(weights: str | os.PathLike | None, class_map: str | os.PathLike | None,
                landcover: str | os.PathLike | None) -> "ClassWeights":
    """The class → BGA table: packaged or ``--weights``, re-keyed by ``--class-map`` for a local raster."""
    from .bga import load_class_map, load_weights

    table = load_weights(weights)
    if class_map is not None:
        if landcover is None:
            raise InputError("--class-map maps the classes of --landcover FILE; give --landcover too "
                             "(WorldCover classes are mapped by --weights)")
        return load_class_map(class_map, table)
    return table


def workspace_mask(workspace: Any, grid: Grid, zoom: int | None) -> np.ndarray | None:
    """The workspace's AOI cells on ``grid`` — its grid at ``zoom`` or a window of it (``--bbox``) —
    so that, as in query outputs, cells outside the AOI are nodata. None: no AOI, or another grid."""
    if workspace is None:
        return None
    full = workspace_grid(workspace, zoom)
    mask = workspace.aoi_mask(full.zoom)
    if mask is None or not (_same_crs(grid.crs, full.crs) and grid.stride == full.stride
                            and grid.footprint == full.footprint):
        return None
    col0 = (grid.x0 - full.x0) / full.stride
    row0 = (full.y0 - grid.y0) / full.stride
    if abs(col0 - round(col0)) > 1e-6 or abs(row0 - round(row0)) > 1e-6:
        return None
    r0, c0 = round(row0), round(col0)
    if r0 < 0 or c0 < 0 or r0 + grid.rows > full.rows or c0 + grid.cols > full.cols:
        return None
    return mask[r0:r0 + grid.rows, c0:c0 + grid.cols]


def workspace_grid(workspace: Any, zoom: int | None) -> Grid:
    """The grid of a workspace at ``zoom`` (default: its only zoom level)."""
    if zoom is None:
        if len(workspace.zooms) != 1:
            raise InputError(f"the workspace has zoom levels {','.join(map(str, workspace.zooms))}; pick one with --zoom")
        zoom = workspace.zooms[0]
    return workspace.grid(zoom)


@dataclass
class BGARun:
    """What ``soundmap bga`` produced."""

    grid: Grid
    result: GridBGA
    paths: list[Path]
    unmapped: dict[int, int]


def make_bga(grid: Grid, source: "LandCoverSource", table: "ClassWeights", out: str | os.PathLike,
             mask: np.ndarray | None = None) -> BGARun:
    """Compute the BGA composite of the cells of ``grid`` (those of ``mask``, when given) and write
    ``out`` and its ``_rgb`` sibling."""
    from ..progress import info
    from .landcover import grid_bga

    info(f"land cover: {source.description}" + (f" ({source.attribution})" if source.attribution else ""))
    result = grid_bga(grid, source, table, mask=mask)
    if result.unmapped:
        codes = ", ".join(str(code) for code in sorted(result.unmapped))
        info(f"land-cover codes {codes} are not in the BGA table and were treated as nodata; "
             "map them with --class-map or --weights")
    if not np.any(np.isfinite(result.values)):
        info("no cell has valid land cover: the composite is all nodata")
    written = write_bga_composite(grid, result, BGAPaths(Path(out)), table_name=table.name,
                                  source_description=source.description, attribution=source.attribution)
    return BGARun(grid=grid, result=result, paths=written, unmapped=result.unmapped)


def check_compare_request(compare: bool, queries: list[str], learned: str | os.PathLike | None) -> list[str]:
    """Validate ``--compare`` / QUERIES / ``--learned`` before any work; returns the queries."""
    if not compare:
        if queries:
            raise InputError("text queries are only used with --compare; add --compare or drop them")
        return []
    if learned is not None:
        if queries:
            raise InputError("give either three text queries or --learned FILE to --compare, not both")
        if not Path(learned).is_file():
            raise InputError(f"--learned {learned} does not exist")
        return []
    if len(queries) != 3:
        raise InputError(f"--compare needs exactly three text queries (R, G, B = Anthrophony, Biophony, "
                         f"Geophony) or --learned FILE; got {len(queries)}")
    return queries


def bga_grid(workspace: Any, *, bbox: str | None, zoom: int | None, family: str, stride: float | None,
             learned: str | os.PathLike | None) -> Grid:
    """The grid of the composite, so that it matches the rasters it will be compared with.

    * ``--learned FILE``: the grid the file is drawn on (with the workspace's footprint when the file
      shares the workspace grid's CRS and stride, i.e. it came from ``soundmap query``);
    * a workspace: its grid at ``zoom`` — the one ``soundmap query`` writes on — cut to ``--bbox``
      with :func:`~soundmap.geo.grid.window_for_bbox`, as ``soundmap query --bbox`` is, so both
      outputs have the same transform;
    * no workspace: a fresh grid over ``--bbox`` (``make_grid``, as ``soundmap map`` would make).
    """
    from ..geo.bbox import parse_bbox
    from ..geo.grid import make_grid

    if learned is not None:
        drawn = grid_of_raster(learned)
        if workspace is None:
            return drawn
        for candidate in ([zoom] if zoom is not None else list(workspace.zooms)):
            base = workspace.grid(candidate)
            if _same_crs(drawn.crs, base.crs) and math.isclose(drawn.stride, base.stride, rel_tol=1e-9):
                return replace(drawn, footprint=base.footprint, zoom=base.zoom, family=base.family)
        return drawn
    if workspace is not None:
        grid = workspace_grid(workspace, zoom)
        if bbox is not None:
            rows, cols = window_for_bbox(grid, parse_bbox(bbox))
            grid = subgrid(grid, rows, cols)
        return grid
    if bbox is None:
        raise InputError("no workspace here: give --bbox W,S,E,N (or --workspace DIR, or --learned FILE)")
    return make_grid(parse_bbox(bbox), family, zoom or 1, stride=stride)


def _same_crs(a: str, b: str) -> bool:
    from pyproj import CRS

    return CRS.from_user_input(a) == CRS.from_user_input(b)
