"""Imagery families the PSM models were trained on, and what a zoom level means for each.

PSM zoom level ``l`` is a *ground footprint*: the training crop of ``l × tile_px`` pixels at the
family's ground sample distance, resized back to ``tile_px`` pixels (psm-reference.md,
"Image preprocessing"). So a cell at zoom ``l`` covers ``l × tile_px × gsd`` metres square and is
rendered to ``tile_px × tile_px`` pixels; the model's GSD positional embedding receives
``l × gsd`` as the input resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError

PSM_ZOOM_LEVELS: tuple[int, ...] = (1, 3, 5)


@dataclass(frozen=True)
class Family:
    """One imagery family: native ground sample distance (m/px) and the stored tile size (px)."""

    name: str
    gsd: float
    tile_px: int

    def footprint_m(self, zoom: int) -> float:
        """Side of a cell's ground footprint in metres at PSM zoom level ``zoom``."""
        return zoom * self.tile_px * self.gsd

    def cell_resolution_m(self, zoom: int) -> float:
        """Effective ground resolution (m/px) of a rendered cell at ``zoom``."""
        return zoom * self.gsd


FAMILIES: dict[str, Family] = {
    "sentinel": Family("sentinel", gsd=10.0, tile_px=256),
    "bing": Family("bing", gsd=0.6, tile_px=300),
    "googleEarth": Family("googleEarth", gsd=0.2, tile_px=256),
}

_ALIASES = {"sentinel": "sentinel", "sentinel2": "sentinel", "s2": "sentinel", "bing": "bing",
            "bingmap": "bing", "googleearth": "googleEarth", "google": "googleEarth"}


def get_family(name: str) -> Family:
    """Look up a family by its name or the reference's spelling (``bingmap``, ``googleEarth``)."""
    key = _ALIASES.get(name.strip().lower())
    if key is None:
        raise InputError(f"unknown imagery family {name!r}; choose one of: sentinel, bing, googleEarth")
    return FAMILIES[key]


def check_zoom(zoom: int) -> int:
    """Validate a PSM zoom level."""
    if zoom not in PSM_ZOOM_LEVELS:
        raise InputError(f"zoom level {zoom} is not a PSM zoom level; use 1, 3 or 5")
    return zoom


def parse_zooms(text: str) -> list[int]:
    """Parse ``"1,3,5"`` into ``[1, 3, 5]`` with a one-line error for anything else."""
    try:
        zooms = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"--zoom expects comma-separated levels like 1,3,5, got {text!r}") from None
    if not zooms:
        raise InputError("--zoom needs at least one level (1, 3 or 5)")
    return [check_zoom(z) for z in zooms]
