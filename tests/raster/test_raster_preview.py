"""Previews: the PNG and GIF open, have the right frames, and draw the data (not a blank canvas)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from soundmap.raster.preview import Panel, write_gif, write_png


def _panel(shift: float) -> Panel:
    values = np.linspace(0, 1, 40 * 30).reshape(30, 40).astype(np.float32)
    values = (values + shift) % 1.0
    values[:3, :3] = np.nan
    return Panel(values, f"shift {shift}")


def test_png_has_panels_colour_bar_and_attribution(tmp_path: Path) -> None:
    path = write_png(tmp_path / "m.png", [_panel(0.0), _panel(0.5)], title="text: birds — hour=20",
                     attribution="Sentinel-2 cloudless by EOX")
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # a colour map was drawn


def test_gif_has_one_frame_per_step(tmp_path: Path) -> None:
    path = write_gif(tmp_path / "m.gif", [_panel(0.0), _panel(0.3), _panel(0.6)], title="series",
                     attribution="EOX")
    with Image.open(path) as image:
        assert image.format == "GIF"
        assert image.n_frames == 3
        frames = []
        for index in range(3):
            image.seek(index)
            frames.append(np.asarray(image.convert("RGB")))
    assert not np.array_equal(frames[0], frames[1])
