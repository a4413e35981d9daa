"""Quick-look previews of heatmaps: the map PNG (:func:`write_map_png`: heatmap or composite over
the region's imagery, lat/lon ticks, scale bar, colour bar or colour triangle, plain title and
attribution) and an animated GIF of a series (panels of 0–1 values, :func:`write_gif`).

Previews read a *decimated* version of the finished COG (GDAL serves it from the internal
overviews), so they cost the same for a village or a continent. Figures are drawn with
matplotlib's Agg canvas directly (no pyplot global state), so they work headless and in threads.
"""

from __future__ import annotations

import io
import math
import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling

from .cog import gdal_env

PREVIEW_MAX_SIDE = 800
"""Longest side, in pixels, of the raster data drawn in a preview."""

COLORMAP = "magma"


@dataclass(frozen=True)
class Panel:
    """One map in a preview: values already scaled to 0–1 (NaN = nodata) and its title."""

    values: np.ndarray
    title: str


def read_decimated(path: str | os.PathLike, band: int, max_side: int = PREVIEW_MAX_SIDE) -> np.ndarray:
    """Band ``band`` of a raster, shrunk so its longest side is at most ``max_side`` (NaN for nodata)."""
    with gdal_env(), rasterio.open(path) as src:
        factor = max(1.0, max(src.width, src.height) / max_side)
        shape = (max(1, round(src.height / factor)), max(1, round(src.width / factor)))
        data = src.read(band, out_shape=shape, resampling=Resampling.average, masked=True)
    return np.ma.filled(data.astype(np.float32), np.nan)


def _figure(rows: int, cols: int, panel_inches: float = 3.2):
    from matplotlib.figure import Figure

    return Figure(figsize=(max(4.5, cols * panel_inches + 1.2), rows * panel_inches + 1.3), dpi=100)


def _draw(fig, panels: Sequence[Panel], cols: int, *, title: str, attribution: str, label: str) -> None:
    rows = math.ceil(len(panels) / cols)
    axes = fig.subplots(rows, cols, squeeze=False)
    image = None
    for ax, panel in zip(axes.flat, panels):
        image = ax.imshow(np.ma.masked_invalid(panel.values), cmap=COLORMAP, vmin=0.0, vmax=1.0,
                          interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(panel.title, 40)), fontsize=8)
        ax.set_axis_off()
    for ax in list(axes.flat)[len(panels):]:
        ax.set_axis_off()
    if image is not None:
        bar = fig.colorbar(image, ax=list(axes.flat), shrink=0.8, fraction=0.05)
        bar.set_label(label, fontsize=8)
    fig.suptitle("\n".join(textwrap.wrap(title, 90)), fontsize=10)
    if attribution:
        fig.text(0.01, 0.01, attribution, fontsize=6, ha="left", va="bottom", color="0.3")


def write_png(dest: str | os.PathLike, panels: Sequence[Panel], *, title: str, attribution: str,
              label: str = "normalised score (higher = more likely heard)", cols: int | None = None) -> Path:
    """A PNG of one or more 0–1 panels sharing one colour bar, a title and the attribution line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    cols = cols or min(len(panels), 4)
    fig = _figure(math.ceil(len(panels) / cols), cols)
    FigureCanvasAgg(fig)
    _draw(fig, panels, cols, title=title, attribution=attribution, label=label)
    fig.savefig(dest, format="png")
    return Path(dest)


def _render_frame(panel: Panel, *, title: str, attribution: str, label: str) -> "PIL.Image.Image":
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    fig = _figure(1, 1, panel_inches=4.5)
    FigureCanvasAgg(fig)
    _draw(fig, [panel], 1, title=title, attribution=attribution, label=label)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def write_gif(dest: str | os.PathLike, frames: Sequence[Panel], *, title: str, attribution: str,
              label: str = "normalised score (common scale over the series)", frame_ms: int = 600) -> Path:
    """An animated GIF, one frame per panel, every frame on the same 0–1 colour scale."""
    images = [_render_frame(frame, title=title, attribution=attribution, label=label) for frame in frames]
    palette = [image.quantize(colors=255, method=2) for image in images]
    palette[0].save(dest, format="GIF", save_all=True, append_images=palette[1:], duration=frame_ms, loop=0)
    return Path(dest)


# ----------------------------------------------------------------------------- map quick-looks
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
HEATMAP_ALPHA = 0.7
"""Opacity of the heatmap over the imagery: the imagery must show through, the colours stay readable."""


@dataclass(frozen=True)
class MapGeometry:
    """Where a quick-look's pixels are: CRS, affine transform and (rows, cols) of the decimated raster."""

    crs: str
    transform: Any
    shape: tuple[int, int]

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(left, right, bottom, top) in CRS units, as matplotlib's imshow wants it."""
        rows, cols = self.shape
        left, top = self.transform.c, self.transform.f
        return left, left + self.transform.a * cols, top + self.transform.e * rows, top


def decimated_geometry(path: str | os.PathLike, max_side: int = PREVIEW_MAX_SIDE) -> MapGeometry:
    """The geometry :func:`read_decimated` gives a raster's bands."""
    from affine import Affine

    with gdal_env(), rasterio.open(path) as src:
        factor = max(1.0, max(src.width, src.height) / max_side)
        shape = (max(1, round(src.height / factor)), max(1, round(src.width / factor)))
        transform = src.transform @ Affine.scale(src.width / shape[1], src.height / shape[0])
        return MapGeometry(crs=src.crs.to_string(), transform=transform, shape=shape)


def describe_setting(month: int | None, hour: int | None) -> str:
    """``May, 20:00`` / ``any month, 20:00`` — the metadata a reader of a map cares about."""
    parts = [MONTHS[month - 1] if month else "", f"{hour:02d}:00" if hour is not None else ""]
    return ", ".join(part for part in parts if part) or "no month or hour given"


def nice_length(span_m: float) -> float:
    """A round length (1, 2 or 5 × 10^k metres) about a fifth of ``span_m``."""
    target = max(span_m / 5.0, 1e-9)
    power = 10 ** math.floor(math.log10(target))
    return max(step * power for step in (1, 2, 5) if step * power <= target) if target >= power else power


def _format_length(metres: float) -> str:
    return f"{metres / 1000:g} km" if metres >= 1000 else f"{metres:g} m"


def _lonlat_ticks(ax, geometry: MapGeometry) -> None:
    """Longitude ticks along the bottom edge and latitude ticks along the left edge, placed where
    the graticule crosses them (the grid's CRS is projected, so lines of lon/lat are not axes)."""
    from matplotlib.ticker import MaxNLocator
    from pyproj import Transformer

    left, right, bottom, top = geometry.extent
    to_lonlat = Transformer.from_crs(geometry.crs, "EPSG:4326", always_xy=True)
    xs = np.linspace(left, right, 200)
    lons, _ = to_lonlat.transform(xs, np.full_like(xs, bottom))
    ys = np.linspace(bottom, top, 200)
    _, lats = to_lonlat.transform(np.full_like(ys, left), ys)
    for values, positions, setter, labeller, axis_name in (
            (np.asarray(lons), xs, ax.set_xticks, ax.set_xticklabels, "lon"),
            (np.asarray(lats), ys, ax.set_yticks, ax.set_yticklabels, "lat")):
        ticks = [t for t in MaxNLocator(nbins=4).tick_values(values.min(), values.max())
                 if values.min() <= t <= values.max()]
        order = np.argsort(values)
        setter([float(np.interp(t, values[order], positions[order])) for t in ticks])
        if axis_name == "lon":
            labeller([f"{abs(t):g}°{'E' if t >= 0 else 'W'}" for t in ticks], fontsize=7)
        else:
            labeller([f"{abs(t):g}°{'N' if t >= 0 else 'S'}" for t in ticks], fontsize=7)


def _scale_bar(ax, geometry: MapGeometry) -> None:
    """A black-and-white bar of a round length, bottom left (grid CRS metres are ground metres
    near the region's centre: the grids are equal-area and centred on the region)."""
    from matplotlib.patches import Rectangle

    left, right, bottom, top = geometry.extent
    length = nice_length(right - left)
    x0 = left + 0.04 * (right - left)
    y0 = bottom + 0.05 * (top - bottom)
    height = 0.015 * (top - bottom)
    for i, colour in enumerate(("black", "white")):
        ax.add_patch(Rectangle((x0 + i * length / 2, y0), length / 2, height, facecolor=colour, edgecolor="black",
                               linewidth=0.6, zorder=5))
    ax.text(x0 + length / 2, y0 + 1.8 * height, _format_length(length), ha="center", va="bottom", fontsize=7,
            zorder=5, color="black", bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1})


def colour_triangle(size: int = 160) -> np.ndarray:
    """An RGBA image of the composite's colour triangle: red, green and blue corners (one query
    high, the others low), white in the middle (all three equally high), transparent outside."""
    height = int(size * math.sqrt(3) / 2)
    y, x = np.mgrid[0:height, 0:size].astype(np.float64)
    corners = np.array([[size / 2, 0.0], [0.0, height - 1.0], [size - 1.0, height - 1.0]])  # red top, green, blue
    (x1, y1), (x2, y2), (x3, y3) = corners
    det = (y2 - y3) * (x1 - x3) + (x3 - x2) * (y1 - y3)
    a = ((y2 - y3) * (x - x3) + (x3 - x2) * (y - y3)) / det
    b = ((y3 - y1) * (x - x3) + (x1 - x3) * (y - y3)) / det
    c = 1.0 - a - b
    weights = np.stack([a, b, c], axis=-1)
    inside = (weights >= -1e-9).all(axis=-1)
    rgb = np.clip(weights / np.maximum(weights.max(axis=-1, keepdims=True), 1e-9), 0, 1)
    return np.dstack([rgb, inside.astype(np.float64)])


def _triangle_legend(fig, labels: Sequence[str]) -> None:
    ax = fig.add_axes((0.80, 0.40, 0.18, 0.22))
    ax.imshow(colour_triangle(), interpolation="bilinear")
    ax.set_axis_off()
    wrap = lambda text: "\n".join(textwrap.wrap(text, 18))  # noqa: E731
    height = colour_triangle().shape[0]
    ax.text(80, -6, wrap(labels[0]), ha="center", va="bottom", fontsize=7, color="#b00000")
    ax.text(0, height + 6, wrap(labels[1]), ha="left", va="top", fontsize=7, color="#007000")
    ax.text(159, height + 6, wrap(labels[2]), ha="right", va="top", fontsize=7, color="#0000b0")
    ax.text(80, height + 45, "each sound scaled over the region;\nwhite = all three likely,\ndark = none likely",
            ha="center", va="top", fontsize=6, color="0.3")


@dataclass(frozen=True)
class MapLayer:
    """One map of a quick-look: 0–1 values (one band, or three for a composite) and a caption."""

    values: Sequence[np.ndarray]
    caption: str


def write_map_png(dest: str | os.PathLike, layers: Sequence[MapLayer], geometry: MapGeometry, *, title: str,
                  attribution: str, label: str, imagery: np.ndarray | None = None,
                  rgb_labels: Sequence[str] | None = None, cols: int | None = None) -> Path:
    """A quick-look for a slide: each layer over the region's own imagery (at reduced opacity),
    lat/lon ticks, a scale bar, a plain-language title and the attribution; a colour bar, or for
    a composite (three-band layers) the colour triangle naming the three queries."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = cols or min(len(layers), 3)
    rows = math.ceil(len(layers) / cols)
    aspect = geometry.shape[0] / max(geometry.shape[1], 1)
    panel_w = 4.2 if len(layers) == 1 else 3.2
    fig = Figure(figsize=(cols * panel_w + 1.8, rows * panel_w * aspect + 1.4), dpi=110)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.12, right=0.78, top=0.86, bottom=0.1, wspace=0.25, hspace=0.3)
    axes = fig.subplots(rows, cols, squeeze=False)
    extent = geometry.extent
    image = None
    for ax, layer in zip(axes.flat, layers):
        if imagery is not None:
            ax.imshow(imagery, extent=extent, interpolation="bilinear")
        if len(layer.values) == 3:
            rgb = np.dstack([np.nan_to_num(v, nan=0.0) for v in layer.values])
            valid = np.all([np.isfinite(v) for v in layer.values], axis=0)
            ax.imshow(np.dstack([np.clip(rgb, 0, 1), valid * HEATMAP_ALPHA]), extent=extent, interpolation="nearest")
        else:
            image = ax.imshow(np.ma.masked_invalid(layer.values[0]), cmap=COLORMAP, vmin=0.0, vmax=1.0,
                              alpha=HEATMAP_ALPHA if imagery is not None else 1.0, extent=extent,
                              interpolation="nearest")
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        _lonlat_ticks(ax, geometry)
        _scale_bar(ax, geometry)
        if layer.caption:
            ax.set_title("\n".join(textwrap.wrap(layer.caption, 45)), fontsize=8)
    for ax in list(axes.flat)[len(layers):]:
        ax.set_axis_off()
    if rgb_labels is not None:
        _triangle_legend(fig, rgb_labels)
    elif image is not None:
        bar = fig.colorbar(image, cax=fig.add_axes((0.82, 0.25, 0.025, 0.5)))
        bar.set_label(label, fontsize=8)
    fig.suptitle("\n".join(textwrap.wrap(title, 90)), fontsize=10)
    note = attribution or ""
    if imagery is None:
        note = (note + " · " if note else "") + "imagery not drawn (not in the tile cache, or region too large)"
    fig.text(0.01, 0.01, note, fontsize=6, ha="left", va="bottom", color="0.3")
    fig.savefig(dest, format="png")
    return Path(dest)
