"""Metadata encodings of PSM (psm-reference.md, "Metadata and fusion"), each formula written once.

:class:`Metadata` is what users pass (``soundmap.Metadata(month=6, hour=7)``): every field is a
scalar (same for every cell), a length-N sequence (one value per cell; ``None``/NaN entries drop
that component for that row only) or ``None`` (the component is dropped for every row, which the
fusion transformer then removes from the token sequence — exactly equivalent and faster).
:meth:`Metadata.encode` turns it into float32 features + per-row validity the fusion module reads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from soundmap.errors import InputError

#: Audio sources in the reference's index order.
AUDIO_SOURCES: dict[str, int] = {"yfcc": 0, "inat": 1, "aporee": 2, "freesound": 3}
#: Caption sources in the reference's index order.
CAPTION_SOURCES: dict[str, int] = {"meta": 0, "qwen": 1, "pengi": 2}
_AUDIO_SOURCE_SPELLING = ("yfcc", "iNat", "aporee", "freesound")
_CAPTION_SOURCE_SPELLING = ("meta", "qwen", "pengi")


# --------------------------------------------------------------------------------------------
# The formulas (pure math on tensors)
# --------------------------------------------------------------------------------------------
def encode_latlon(lat: torch.Tensor, lon: torch.Tensor) -> torch.Tensor:
    """Lat/lon → ``[sin(π·lat/90), cos(π·lat/90), sin(π·lon/180), cos(π·lon/180)]`` (N × 4).

    Quirk kept from the reference: latitude is scaled by π/90, so it wraps over a full period
    across −90…90 (the poles encode alike); longitude uses π/180 as usual.
    """
    lat = lat.to(torch.float64)
    lon = lon.to(torch.float64)
    return torch.stack([torch.sin(math.pi * lat / 90), torch.cos(math.pi * lat / 90),
                        torch.sin(math.pi * lon / 180), torch.cos(math.pi * lon / 180)], dim=-1).float()


def encode_month(month: torch.Tensor) -> torch.Tensor:
    """Month (1–12) → ``[sin(2π·m/12), cos(2π·m/12)]`` (N × 2)."""
    month = month.to(torch.float64)
    return torch.stack([torch.sin(2 * math.pi * month / 12), torch.cos(2 * math.pi * month / 12)], dim=-1).float()


def encode_hour(hour: torch.Tensor) -> torch.Tensor:
    """Hour (0–23) → ``[sin(2π·h/23), cos(2π·h/23)]`` (N × 2).

    Quirk kept on purpose: the reference divides by **23**, not 24, so hour 23 encodes exactly
    like hour 0 (sin 0, cos 1). The released checkpoints were trained with it.
    """
    hour = hour.to(torch.float64)
    return torch.stack([torch.sin(2 * math.pi * hour / 23), torch.cos(2 * math.pi * hour / 23)], dim=-1).float()


def _source_index(name: Any, table: dict[str, int], spelling: Sequence[str], what: str) -> int:
    if isinstance(name, (int, np.integer)) and not isinstance(name, bool) and 0 <= int(name) < len(table):
        return int(name)
    key = str(name).strip().lower()
    if key not in table:
        raise InputError(f"unknown {what} {name!r}; valid: {', '.join(spelling)}")
    return table[key]


def audio_source_index(name: Any) -> int:
    """Audio source name (case-insensitive) → reference index: yfcc 0, iNat 1, aporee 2, freesound 3."""
    return _source_index(name, AUDIO_SOURCES, _AUDIO_SOURCE_SPELLING, "audio source")


def caption_source_index(name: Any) -> int:
    """Caption source name (case-insensitive) → reference index: meta 0, qwen 1, pengi 2."""
    return _source_index(name, CAPTION_SOURCES, _CAPTION_SOURCE_SPELLING, "caption source")


# --------------------------------------------------------------------------------------------
# User-facing container
# --------------------------------------------------------------------------------------------
class MetaToken(NamedTuple):
    """One metadata component for N rows: encoded ``values`` (N × d float32, or N long indices for
    sources) and ``valid`` (N bool; False = dropped for that row)."""

    values: torch.Tensor
    valid: torch.Tensor


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _as_list(value: Any) -> list[Any] | None:
    """A sequence/array as a list; ``None`` for a scalar."""
    if isinstance(value, (str, bytes)) or value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return None if value.ndim == 0 else value.reshape(-1).tolist()
    if isinstance(value, Sequence):
        return list(value)
    return None


def _sequence_length(value: Any) -> int | None:
    """Length of a per-row field; None for a scalar (or None)."""
    if value is None or isinstance(value, (str, bytes)):
        return None
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return None if value.ndim == 0 else int(np.prod(value.shape))
    if isinstance(value, Sequence):
        return len(value)
    return None


def _numeric(values: Any, field_name: str) -> np.ndarray:
    """Float64 array of a field's values, NaN where a row is missing. Numeric arrays/tensors are
    converted in one step (million-cell grids); lists may hold None."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    if isinstance(values, np.ndarray) and values.dtype.kind in "biuf":
        return values.astype(np.float64).reshape(-1)
    values = list(values) if isinstance(values, (list, tuple, np.ndarray)) else [values]
    out = np.full(len(values), np.nan, dtype=np.float64)
    for i, v in enumerate(values):
        if _is_missing(v):
            continue
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            raise InputError(f"{field_name} must be a number, got {v!r}") from None
    return out


@dataclass(frozen=True)
class Metadata:
    """Metadata fused with the image: scalar, length-N sequence, or None (= dropped) per field.

    ``lat``/``lon`` go together (degrees); ``month`` 1–12; ``hour`` 0–23; ``audio_source`` one of
    yfcc, iNat, aporee, freesound; ``caption_source`` one of meta, qwen, pengi.
    """

    lat: Any = None
    lon: Any = None
    month: Any = None
    hour: Any = None
    audio_source: Any = None
    caption_source: Any = None

    def __post_init__(self) -> None:
        if (self.lat is None) != (self.lon is None):
            raise InputError("give both lat and lon (or neither) in the metadata")
        self.length()  # validates consistent lengths
        for check in (self._check_lat, self._check_range("month", 1, 12), self._check_range("hour", 0, 23)):
            check()
        for value in self._values("audio_source"):
            if not _is_missing(value):
                audio_source_index(value)
        for value in self._values("caption_source"):
            if not _is_missing(value):
                caption_source_index(value)

    # -- validation -----------------------------------------------------------------------------
    def _raw(self, name: str) -> Any:
        """The field as given (None → empty list), for vectorised numeric checks."""
        value = getattr(self, name)
        return [] if value is None else value

    def _values(self, name: str) -> list[Any]:
        value = getattr(self, name)
        if value is None:
            return []
        as_list = _as_list(value)
        return [value] if as_list is None else as_list

    def _check_lat(self) -> None:
        lat = _numeric(self._raw("lat"), "lat")
        if np.any(np.abs(lat[~np.isnan(lat)]) > 90):
            raise InputError("latitude must be within −90…90 degrees")
        _numeric(self._raw("lon"), "lon")

    def _check_range(self, name: str, low: float, high: float) -> Any:
        def check() -> None:
            values = _numeric(self._raw(name), name)
            finite = values[~np.isnan(values)]
            if np.any((finite < low) | (finite > high)):
                raise InputError(f"{name} must be within {low}–{high}, got {finite[(finite < low) | (finite > high)][0]:g}")
        return check

    def length(self) -> int | None:
        """The common length of the sequence fields, or None if every field is a scalar/None."""
        lengths = {name: n for name in ("lat", "lon", "month", "hour", "audio_source", "caption_source")
                   if (n := _sequence_length(getattr(self, name))) is not None}
        if len(set(lengths.values())) > 1:
            raise InputError(f"metadata sequences have different lengths: {lengths}")
        return next(iter(lengths.values()), None)

    def present(self) -> tuple[str, ...]:
        """Components given (not None), with the model's component names."""
        names = {"audio_source": self.audio_source, "caption_source": self.caption_source,
                 "latlon": self.lat, "month": self.month, "hour": self.hour}
        return tuple(k for k, v in names.items() if v is not None)

    # -- encoding -------------------------------------------------------------------------------
    def _broadcast(self, name: str, n: int) -> list[Any]:
        value = getattr(self, name)
        as_list = _as_list(value)
        if as_list is None:
            return [value] * n
        if len(as_list) != n:
            raise InputError(f"metadata {name} has {len(as_list)} values for {n} cells")
        return as_list

    def _numeric_token(self, names: Sequence[str], n: int, encoder: Any) -> MetaToken:
        scalar = all(_sequence_length(getattr(self, name)) is None for name in names)
        rows = 1 if scalar else n  # a value shared by every row is encoded once, then broadcast
        columns = []
        for name in names:
            values = _numeric(self._raw(name), name)
            if values.shape[0] == 1 and rows > 1 and _sequence_length(getattr(self, name)) is None:
                values = np.repeat(values, rows)
            if values.shape[0] != rows:
                raise InputError(f"metadata {name} has {values.shape[0]} values for {n} cells")
            columns.append(torch.from_numpy(values))
        valid = torch.ones(rows, dtype=torch.bool)
        for column in columns:
            valid &= ~torch.isnan(column)
        values = encoder(*[torch.nan_to_num(c) for c in columns])
        return MetaToken(values.expand(n, -1), valid.expand(n))

    def _source_token(self, name: str, n: int, index_of: Any) -> MetaToken:
        value = getattr(self, name)
        if _sequence_length(value) is None:  # one source for every row
            return MetaToken(torch.full((n,), index_of(value), dtype=torch.long), torch.ones(n, dtype=torch.bool))
        raw = self._broadcast(name, n)
        valid = torch.tensor([not _is_missing(v) for v in raw], dtype=torch.bool)
        values = torch.tensor([index_of(v) if not _is_missing(v) else 0 for v in raw], dtype=torch.long)
        return MetaToken(values, valid)

    def encode(self, n: int, components: Sequence[str]) -> dict[str, MetaToken]:
        """Encode the given model components for ``n`` rows; a component that is None here (or
        dropped for every row) is left out, which the fusion module treats as dropped."""
        if (length := self.length()) is not None and length != n:
            raise InputError(f"metadata has {length} values per field but there are {n} cells")
        builders = {
            "audio_source": lambda: self._source_token("audio_source", n, audio_source_index),
            "caption_source": lambda: self._source_token("caption_source", n, caption_source_index),
            "latlon": lambda: self._numeric_token(("lat", "lon"), n, encode_latlon),
            "month": lambda: self._numeric_token(("month",), n, encode_month),
            "hour": lambda: self._numeric_token(("hour",), n, encode_hour),
        }
        tokens: dict[str, MetaToken] = {}
        for component in components:
            if component in self.present():
                token = builders[component]()
                if bool(token.valid.any()):
                    tokens[component] = token
        return tokens
