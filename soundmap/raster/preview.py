"""Quick-look previews of heatmaps: a PNG with colour bar, titles and attribution; an animated GIF.

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
