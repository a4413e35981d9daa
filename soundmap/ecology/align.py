"""``soundmap align``: do recordings that sound alike come from places that look alike?

Following the cross-modal urban sensing study: for N geotagged recordings, the N × N cosine
similarities of their audio embeddings are correlated (Pearson r over the upper triangle) with the
N × N similarities of what is at their locations —

* ``image``: cosine similarity of the imagery embeddings (the model's own image encoder, pre-fusion
  features, so that no location or time metadata leaks into "looks alike");
* ``bga``: cosine similarity of the BGA vectors (A, B, G) of the land cover around each recording
  — a footprint of the model's cell size centred on it, or the cell of an existing ``soundmap bga``
  raster holding it (``--bga-raster``); the study compares class-proportion vectors by cosine;
* ``bga_anthrophony`` / ``bga_biophony`` / ``bga_geophony``: per category, the similarity of two
  scalars ``1 − |w_i − w_j|`` (a cosine of 1-vectors would be ±1 and say nothing).

Significance is a Mantel permutation test (:func:`soundmap.ecology.stats.mantel`), overall and
within each group (e.g. city): the pairs share recordings, so a textbook p-value would overstate it.
Recordings without imagery (or without valid land cover) are left out of that analysis only.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path, write_text_atomic
from ..errors import InputError
from ..families import get_family
from ..progress import info, progress
from .bga import BANDS
from .stats import MIN_MANTEL_SIZE, MantelResult, cosine_similarity_matrix, grouped_mantel, mantel, upper_triangle

AUDIO_COLUMN, LAT_COLUMN, LON_COLUMN, IMAGE_COLUMN, DEFAULT_GROUP_COLUMN = "audio", "lat", "lon", "image", "group"


# --------------------------------------------------------------------------- manifest
@dataclass
class Manifest:
    """Recordings to align: audio files, their locations, optional images and groups."""

    audio: list[Path]
    lat: np.ndarray
    lon: np.ndarray
    images: list[Path] | None = None
    groups: np.ndarray | None = None
    group_column: str | None = None
    street_images: list[Path] | None = None

    def __len__(self) -> int:
        return len(self.audio)


def read_manifest(path: str | os.PathLike, group_column: str | None = None,
                  street_column: str | None = None) -> Manifest:
    """Read and validate a manifest CSV; relative file paths are relative to the CSV's folder.

    ``street_column``: a column of street-level image files that must be present (``align
    --image-encoder clip`` / ``--combine-views``)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(f"manifest {path} does not exist")
    try:
        table = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise InputError(f"manifest {path} is not a readable CSV ({str(err).splitlines()[0]})") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in (AUDIO_COLUMN, LAT_COLUMN, LON_COLUMN) if c not in table.columns]
    if missing:
        raise InputError(f"manifest {path} lacks column(s) {', '.join(missing)}; it needs audio, lat, lon")
    if len(table) < MIN_MANTEL_SIZE:
        raise InputError(f"manifest {path} lists {len(table)} recordings; alignment needs at least {MIN_MANTEL_SIZE}")
    lat = pd.to_numeric(table[LAT_COLUMN], errors="coerce").to_numpy(dtype=np.float64)
    lon = pd.to_numeric(table[LON_COLUMN], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(lat) | ~np.isfinite(lon) | (np.abs(lat) > 85) | (np.abs(lon) > 180))
    if bad.size:
        raise InputError(f"manifest {path} row {int(bad[0]) + 2} has no valid lat/lon (|lat| ≤ 85, |lon| ≤ 180)")
    base = path.parent
    audio = [_existing(base, value, path, row, AUDIO_COLUMN) for row, value in enumerate(table[AUDIO_COLUMN])]
    images = None
    if IMAGE_COLUMN in table.columns:
        images = [_existing(base, value, path, row, IMAGE_COLUMN) for row, value in enumerate(table[IMAGE_COLUMN])]
    street = None
    if street_column is not None:
        if street_column not in table.columns:
            raise InputError(f"manifest {path} has no street-image column {street_column!r} (columns: "
                             f"{', '.join(table.columns)}); add it or name it with --street-image-column")
        street = [_existing(base, value, path, row, street_column) for row, value in enumerate(table[street_column])]
    if group_column is not None and group_column not in table.columns:
        raise InputError(f"--group-column {group_column!r} is not a column of {path} "
                         f"(columns: {', '.join(table.columns)})")
    column = group_column or (DEFAULT_GROUP_COLUMN if DEFAULT_GROUP_COLUMN in table.columns else None)
    groups = table[column].astype(str).to_numpy() if column else None
    return Manifest(audio=audio, lat=lat, lon=lon, images=images, groups=groups, group_column=column,
                    street_images=street)


def _existing(base: Path, value: Any, manifest: Path, row: int, column: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"manifest {manifest} row {row + 2} has an empty {column} path")
    file = Path(value.strip()).expanduser()
    file = file if file.is_absolute() else base / file
    if not file.is_file():
        raise InputError(f"manifest {manifest} row {row + 2}: {column} file {file} does not exist")
    return file


# --------------------------------------------------------------------------- pure statistics
def scalar_similarity(values: np.ndarray) -> np.ndarray:
    """N × N similarity of scalars in [0, 1]: ``1 − |v_i − v_j|`` (1 on the diagonal)."""
    v = np.asarray(values, dtype=np.float64)
    return 1.0 - np.abs(v[:, None] - v[None, :])


@dataclass
class Analysis:
    """One similarity correlated with audio similarity: overall and per group."""

    name: str
    overall: MantelResult
    groups: dict[str, MantelResult] = field(default_factory=dict)
    used: np.ndarray | None = None   # indices of the recordings that entered
    other: np.ndarray | None = None  # the other similarity matrix (for the figure)

    def to_dict(self) -> dict[str, Any]:
        return {"overall": self.overall.to_dict(), "groups": {k: v.to_dict() for k, v in self.groups.items()}}


def correlate_similarities(name: str, audio_sim: np.ndarray, other_sim: np.ndarray, valid: np.ndarray,
                           groups: np.ndarray | None, **mantel_kwargs: Any) -> Analysis | None:
    """Mantel test of ``audio_sim`` vs ``other_sim`` over the ``valid`` recordings (None if < 4)."""
    used = np.flatnonzero(np.asarray(valid, dtype=bool))
    if used.size < MIN_MANTEL_SIZE:
        info(f"{name}: only {used.size} recordings have data; skipped")
        return None
    sub = np.ix_(used, used)
    a, b = audio_sim[sub], other_sim[sub]
    overall = mantel(a, b, **mantel_kwargs)
    by_group = grouped_mantel(a, b, groups[used], **mantel_kwargs) if groups is not None else {}
    return Analysis(name=name, overall=overall, groups=by_group, used=used, other=b)


def align_statistics(audio: np.ndarray, *, images: np.ndarray | None = None, image_valid: np.ndarray | None = None,
                     bga: np.ndarray | None = None, groups: np.ndarray | None = None, permutations: int = 999,
                     seed: int = 0, alternative: str = "two-sided") -> dict[str, Analysis]:
    """Every analysis of ``soundmap align`` from embeddings and BGA vectors (no I/O, no model).

    ``audio`` N × D and ``images`` N × D' embeddings; ``bga`` 3 × N (NaN where no land cover).
    """
    kwargs = {"permutations": permutations, "seed": seed, "alternative": alternative}
    audio_sim = cosine_similarity_matrix(audio)
    n = audio_sim.shape[0]
    out: dict[str, Analysis] = {}
    candidates: list[tuple[str, np.ndarray, np.ndarray]] = []
    if images is not None:
        valid = np.ones(n, dtype=bool) if image_valid is None else np.asarray(image_valid, dtype=bool)
        candidates.append(("image", cosine_similarity_matrix(np.where(valid[:, None], images, 0.0)), valid))
    if bga is not None:
        bga = np.asarray(bga, dtype=np.float64)
        valid = np.all(np.isfinite(bga), axis=0)
        filled = np.nan_to_num(bga, nan=0.0)
        candidates.append(("bga", cosine_similarity_matrix(filled.T), valid))
        for k, band in enumerate(BANDS):
            candidates.append((f"bga_{band}", scalar_similarity(filled[k]), valid))
    for name, other, valid in candidates:
        analysis = correlate_similarities(name, audio_sim, other, valid, groups, **kwargs)
        if analysis is not None:
            out[name] = analysis
    return out


# --------------------------------------------------------------------------- the workflow
@dataclass(frozen=True)
class AlignOptions:
    manifest: Path
    out: Path = Path("align.json")
    model: str | None = None
    zoom: int = 1
    source: str | None = None
    group_column: str | None = None
    permutations: int = 999
    seed: int = 0
    alternative: str = "two-sided"
    bga: bool = True
    bga_raster: Path | None = None
    landcover: Path | None = None
    class_map: Path | None = None
    weights: Path | None = None
    worldcover_year: int = 2021
    worldcover_url: str | None = None
    cache_dir: Path | None = None
    device: str = "auto"
    tiles_config: Path | None = None
    audio_encoder: str = "model"
    image_encoder: str = "model"
    street_image_column: str = "street_image"
    combine_views: bool = False
    family: str = "sentinel"
    segmenter: str = "worldcover"

    @property
    def study_mode(self) -> bool:
        """The cross-modal study's encoders (AST / CLIP / RemoteCLIP) rather than only the PSM model."""
        return (self.audio_encoder != "model" or self.image_encoder != "model" or self.combine_views
                or self.segmenter != "worldcover")


@dataclass
class AlignResult:
    analyses: dict[str, Analysis]
    paths: list[Path]
    n: int

    def summary_lines(self) -> list[str]:
        lines = []
        for name, analysis in self.analyses.items():
            lines.append(f"{name}: r={_fmt(analysis.overall.r)} p={_fmt(analysis.overall.p)} "
                         f"(n={analysis.overall.n}, {analysis.overall.alternative})")
            for group, result in analysis.groups.items():
                lines.append(f"  {group}: r={_fmt(result.r)} p={_fmt(result.p)} (n={result.n})")
        return lines


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def check_options(options: AlignOptions) -> None:
    """Model-independent checks, before anything slow happens."""
    from ..families import check_zoom

    check_zoom(options.zoom)
    if options.permutations < 1:
        raise InputError(f"--permutations must be at least 1, got {options.permutations}")
    if options.alternative not in ("two-sided", "greater", "less"):
        raise InputError(f"--alternative {options.alternative!r} is not one of two-sided, greater, less")
    if options.bga_raster is not None and not Path(options.bga_raster).is_file():
        raise InputError(f"--bga-raster {options.bga_raster} does not exist; write one with `soundmap bga`")
    if options.out.suffix.lower() != ".json":
        raise InputError(f"--out {options.out} must be a .json file (the figure is written beside it)")
    if options.source is not None:  # a typo in --source fails before the recordings are embedded
        from ..tiles.sources import resolve_source

        resolve_source(options.source, config_path=options.tiles_config)


def run_align(options: AlignOptions, *, model: Any = None) -> AlignResult:
    """Embed the recordings and their places, run every analysis, write JSON + PNG."""
    check_options(options)
    if options.study_mode:
        from .study import run_study_align

        return run_study_align(options, model=model)
    manifest = read_manifest(options.manifest, options.group_column)
    table = source = None
    if options.bga and options.bga_raster is None:
        from .composite import class_table, landcover_source

        table = class_table(options.weights, options.class_map, options.landcover)
        source = landcover_source(options.landcover, year=options.worldcover_year,
                                  base_url=options.worldcover_url, cache_dir=options.cache_dir)
    loaded = model if model is not None else _load_model(options)
    family = get_family(loaded.family)
    audio = audio_embeddings(loaded, manifest.audio)
    images, image_valid = image_embeddings(manifest, loaded, options)
    bga = None
    if options.bga and options.bga_raster is not None:
        bga = sample_bga_raster(options.bga_raster, manifest.lon, manifest.lat)
    elif source is not None and table is not None:
        from .landcover import points_bga

        bga = points_bga(manifest.lon, manifest.lat, family.footprint_m(options.zoom), source, table).values
    analyses = align_statistics(audio, images=images, image_valid=image_valid, bga=bga, groups=manifest.groups,
                                permutations=options.permutations, seed=options.seed,
                                alternative=options.alternative)
    if not analyses:
        raise InputError("nothing to correlate: no imagery or land cover for at least 4 recordings")
    report = {
        "manifest": str(options.manifest), "model": getattr(loaded, "name", None), "n_recordings": len(manifest),
        "zoom": options.zoom, "footprint_m": family.footprint_m(options.zoom),
        "group_column": manifest.group_column, "permutations": options.permutations, "seed": options.seed,
        "alternative": options.alternative,
        "landcover": str(options.bga_raster) if options.bga_raster else getattr(source, "description", None),
        "attribution": getattr(source, "attribution", None),
        "analyses": {name: a.to_dict() for name, a in analyses.items()},
        "method": ("Pearson r of the upper triangles (no diagonal) of the audio-embedding cosine similarity "
                   "matrix and each other similarity matrix; Mantel p = (1 + #extreme) / (1 + permutations), "
                   "rows and columns of one matrix permuted jointly"),
    }
    write_text_atomic(options.out, json.dumps(report, indent=2) + "\n")
    png = options.out.with_suffix(".png")
    render_alignment_png(cosine_similarity_matrix(audio), analyses, png)
    return AlignResult(analyses=analyses, paths=[options.out, png], n=len(manifest))


def sample_bga_raster(path: Path, lons: np.ndarray, lats: np.ndarray) -> np.ndarray:
    """3 × N BGA vectors of the cells of an existing ``soundmap bga`` raster that hold the points
    (NaN outside the raster or on nodata cells): the "cells' BGA vectors" of a mapped region."""
    import rasterio
    from pyproj import Transformer

    from .composite import read_three_bands

    values, transform, crs = read_three_bands(path, "--bga-raster")
    x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(np.asarray(lons), np.asarray(lats))
    rows, cols = rasterio.transform.rowcol(transform, np.asarray(x), np.asarray(y), op=np.floor)
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    inside = (rows >= 0) & (rows < values.shape[1]) & (cols >= 0) & (cols < values.shape[2])
    out = np.full((3, rows.size), np.nan)
    out[:, inside] = values[:, rows[inside], cols[inside]]
    return out


def _load_model(options: AlignOptions) -> Any:
    """``--model`` (an installed name or a model directory), else the installed default Sentinel model."""
    from ..errors import ModelError
    from ..models import registry
    from ..models.soundscape import load_model

    name = options.model
    if name is None:
        default_for = getattr(registry, "default_model_for_family", None)
        if default_for is None:
            raise ModelError("no default model is known; give --model NAME_OR_DIRECTORY")
        name = default_for("sentinel", cache_dir=options.cache_dir)
    return load_model(name, device=options.device)


def point_grid(lon: float, lat: float, zoom: int, family: str) -> Any:
    """A one-cell grid whose footprint is centred on (lon, lat), in an equal-area CRS centred there."""
    from ..geo.grid import Grid

    footprint = get_family(family).footprint_m(zoom)
    crs = f"+proj=laea +lat_0={lat:.8f} +lon_0={lon:.8f} +x_0=0 +y_0=0 +datum=WGS84 +units=m +no_defs"
    return Grid(crs=crs, x0=-footprint / 2, y0=footprint / 2, stride=footprint, footprint=footprint,
                rows=1, cols=1, zoom=zoom, family=family)


ENCODE_CHUNK = 64
"""Recordings decoded / rendered and encoded at a time, so memory does not grow with the manifest."""


def audio_embeddings(model: Any, paths: list[Path]) -> np.ndarray:
    """N × D audio embeddings (the model's CLAP audio branch, L2-normalised ``mu``), chunk by chunk."""
    chunks = []
    for start in progress(range(0, len(paths), ENCODE_CHUNK), desc="audio embeddings", unit="chunk"):
        batch = [str(p) for p in paths[start:start + ENCODE_CHUNK]]
        chunks.append(model.encode_audio(batch).mu.detach().cpu().numpy().astype(np.float64))
    return np.concatenate(chunks)


def image_embeddings(manifest: Manifest, model: Any, options: AlignOptions) -> tuple[np.ndarray | None, np.ndarray]:
    """N × D image features of the recordings' places (pre-fusion: imagery only) and which are valid.

    Images come from the manifest's ``image`` column when present (resized to the model's tile
    size), else are rendered with soundmap's tiles/render code over each recording's cell footprint
    from ``--source``; with neither, imagery is skipped (None).
    """
    n = len(manifest)
    valid = np.zeros(n, dtype=bool)
    if manifest.images is None and options.source is None:
        info("no image column and no --source: imagery alignment skipped")
        return None, valid
    size = get_family(model.family).tile_px
    renderer = None if manifest.images is not None else PlaceRenderer(manifest, model.family, options)
    features: np.ndarray | None = None
    for start in progress(range(0, n, ENCODE_CHUNK), desc="image embeddings", unit="chunk"):
        stop = min(n, start + ENCODE_CHUNK)
        if renderer is None:
            pixels = np.stack([load_image(p, size) for p in manifest.images[start:stop]])  # type: ignore[index]
            ok = np.ones(stop - start, dtype=bool)
        else:
            pixels, ok = renderer.render(range(start, stop))
        valid[start:stop] = ok
        if ok.any():
            encoded = model.encode_image(pixels[ok], options.zoom).detach().cpu().numpy().astype(np.float64)
            if features is None:
                features = np.zeros((n, encoded.shape[1]))
            features[np.arange(start, stop)[ok]] = encoded
    if not valid.all():
        info(f"{int((~valid).sum())} recording(s) have no imagery at their location; left out of 'image'")
    return features, valid


def read_rgb(path: Path) -> np.ndarray:
    """An image file as uint8 H × W × 3; an undecodable file is a one-line :class:`InputError`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"image {path} cannot be decoded ({reason}); give PNG/JPEG/GeoTIFF RGB images") from None


def load_image(path: Path, size: int) -> np.ndarray:
    """An image file as uint8 size × size × 3 (antialiased resize with torch, as the models expect)."""
    import torch

    rgb = read_rgb(path)
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    tensor = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    resized = torch.nn.functional.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True,
                                              align_corners=False)
    return resized[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


class PlaceRenderer:
    """Renders recordings' cells with the tile pipeline; missing tiles are fetched once, up front."""

    def __init__(self, manifest: Manifest, family: str, options: AlignOptions) -> None:
        from ..geo.tileplan import tiles_for_grid
        from ..paths import tile_cache_path
        from ..tiles.cache import TileCache
        from ..tiles.fetch import fetch_tiles
        from ..tiles.sources import resolve_source

        self.source = resolve_source(options.source, family=family, config_path=options.tiles_config)
        self.grids = [point_grid(float(lon), float(lat), options.zoom, family)
                      for lon, lat in zip(manifest.lon, manifest.lat)]
        self.cache = TileCache(tile_cache_path(options.cache_dir)) if self.source.kind != "file" else None
        if self.cache is not None:
            wanted: set[tuple[int, int, int]] = set()
            for grid in self.grids:
                z, tiles = tiles_for_grid(grid, self.source)
                wanted.update((z, x, y) for x, y in tiles)
            missing = self.cache.missing(self.source.cache_key, sorted(wanted))
            if missing:
                fetch_tiles(self.source, missing, self.cache)

    def render(self, indices: range) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (len × H × W × 3) of the given recordings and which have full imagery."""
        from ..tiles.render import render_cells

        size = self.grids[0].tile_px
        pixels = np.zeros((len(indices), size, size, 3), dtype=np.uint8)
        valid = np.zeros(len(indices), dtype=bool)
        for k, i in enumerate(indices):
            images, ok = render_cells(self.grids[i], [0], [0], self.source, self.cache)
            pixels[k], valid[k] = images[0], ok[0]
        return pixels, valid


def render_alignment_png(audio_sim: np.ndarray, analyses: dict[str, Analysis], dest: Path) -> Path:
    """Scatter plots of audio similarity against image similarity, BGA-vector similarity and the
    three per-category similarities (one panel, colour per category), and a heat map of the audio
    similarity matrix. One row of at most four panels, drawn with matplotlib's Agg canvas."""
    from matplotlib.figure import Figure

    band_names = [f"bga_{band}" for band in BANDS]
    singles = [name for name in ("image", "bga") if name in analyses]
    bands = [name for name in band_names if name in analyses]
    panels = len(singles) + (1 if bands else 0) + 1
    fig = Figure(figsize=(3.3 * panels, 3.4), dpi=90)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for ax, name in zip(axes, singles):
        _scatter(ax, audio_sim, analyses[name], "tab:blue", f"{name}: r={_fmt(analyses[name].overall.r)}, "
                                                            f"p={_fmt(analyses[name].overall.p)}")
        ax.set_xlabel(f"{name} similarity", fontsize=7)
    if bands:
        ax = axes[len(singles)]
        for name, colour in zip(band_names, ("tab:red", "tab:green", "tab:blue")):
            if name in analyses:
                _scatter(ax, audio_sim, analyses[name], colour, None,
                         label=f"{name[4:]} r={_fmt(analyses[name].overall.r)}")
        ax.legend(fontsize=6, markerscale=3, loc="lower right")
        ax.set_title("per BGA category (1 - |difference|)", fontsize=8)
        ax.set_xlabel("category similarity", fontsize=7)
    heat = axes[-1]
    heat.imshow(audio_sim, cmap="viridis", interpolation="nearest")
    heat.set_title("audio similarity matrix", fontsize=8)
    heat.tick_params(labelsize=6)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.15, top=0.88, wspace=0.35)
    with atomic_path(dest, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, format="png")
    return dest


def _scatter(ax: Any, audio_sim: np.ndarray, analysis: Analysis, colour: str, title: str | None,
             label: str | None = None) -> None:
    used = analysis.used
    ax.scatter(upper_triangle(analysis.other), upper_triangle(audio_sim[np.ix_(used, used)]), s=3, alpha=0.4,
               color=colour, label=label)
    if title:
        ax.set_title(title, fontsize=8)
    ax.set_ylabel("audio similarity", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.ticklabel_format(useOffset=False)
