"""Bounding boxes in EPSG:4326 and their validation.

A bbox is where every map starts, so a bad one must stop the run at once with a one-line message
that says what to fix, not a traceback from deep inside PROJ or GDAL.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..errors import InputError

MAX_ABS_LATITUDE = 85.0
"""Web-mercator imagery ends at ±85.05°; a bbox beyond ±85° has no imagery to render."""

_SEPARATORS = re.compile(r"[,\s]+")


@dataclass(frozen=True)
class BBox:
    """West, south, east, north in EPSG:4326 degrees (validated on construction)."""

    west: float
    south: float
    east: float
    north: float

    def __post_init__(self) -> None:
        validate_bbox(self.west, self.south, self.east, self.north)

    @property
    def center(self) -> tuple[float, float]:
        """Centre as (lon, lat) degrees: where the default equal-area grid CRS is centred."""
        return (self.west + self.east) / 2.0, (self.south + self.north) / 2.0

    def as_tuple(self) -> tuple[float, float, float, float]:
        """(west, south, east, north)."""
        return self.west, self.south, self.east, self.north

    def to_text(self) -> str:
        """The ``W,S,E,N`` form that :func:`parse_bbox` reads back."""
        return ",".join(repr(float(v)) for v in self.as_tuple())


def validate_bbox(west: float, south: float, east: float, north: float) -> None:
    """Raise :class:`InputError` unless the four numbers form a usable bbox.

    Crossing the antimeridian (west > east) is not supported: the message says to split the bbox.
    """
    values = {"west": west, "south": south, "east": east, "north": north}
    for name, value in values.items():
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InputError(f"bbox {name} must be a finite number of degrees, got {value!r}")
    for name in ("west", "east"):
        if not -180.0 <= values[name] <= 180.0:
            raise InputError(f"bbox {name} {values[name]} is outside -180..180 degrees longitude")
    for name in ("south", "north"):
        if abs(values[name]) > MAX_ABS_LATITUDE:
            raise InputError(f"bbox {name} {values[name]} is beyond ±{MAX_ABS_LATITUDE:g}° latitude, "
                             "where web-mercator imagery ends; use a bbox within -85..85")
    if west >= east:
        raise InputError(f"bbox west ({west}) must be less than east ({east}); bboxes crossing "
                         "the antimeridian are not supported, split it into two")
    if south >= north:
        raise InputError(f"bbox south ({south}) must be less than north ({north})")


def parse_bbox(text: str) -> BBox:
    """Parse ``"W,S,E,N"`` (commas and/or spaces) into a validated :class:`BBox`."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("--bbox expects west,south,east,north in degrees, e.g. 13.3,52.4,13.5,52.6")
    parts = [p for p in _SEPARATORS.split(text.strip()) if p]
    if len(parts) != 4:
        raise InputError(f"--bbox expects 4 numbers west,south,east,north, got {len(parts)} in {text!r}")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise InputError(f"--bbox has a value that is not a number: {text!r} "
                         "(expected west,south,east,north in degrees)") from None
    return BBox(*values)
