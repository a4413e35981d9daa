"""Biophony / Geophony / Anthrophony (BGA) weights of land-cover classes, and the per-cell mean.

The BGA framework (Pijanowski et al.) splits a soundscape into Anthrophony (people, traffic,
machines), Biophony (animals) and Geophony (wind, water). The cross-modal urban sensing study maps
segmentation classes onto the three with a fixed table; soundmap ships that table mapped onto ESA
WorldCover (``soundmap/data/bga_worldcover.yaml``) and lets users override it (``--weights``) or map
their own categorical raster onto it (``--class-map``).

Band order everywhere in soundmap is **(Anthrophony, Biophony, Geophony)** so that an RGB composite
reads R = people, G = green, B = water/wind, as in the learned composites of ``soundmap query``.
The study's tables list (Bio, Geo, Anthro); the YAML names every weight, so no order is implied.

Everything here is pure (tables in, arrays out) except :func:`load_weights` / :func:`load_class_map`
which read and validate YAML once, at the edge.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..errors import ConfigError

BANDS: tuple[str, str, str] = ("anthrophony", "biophony", "geophony")
"""Output band order: R = Anthrophony, G = Biophony, B = Geophony."""

DEFAULT_WEIGHTS_RESOURCE = "bga_worldcover.yaml"


@dataclass(frozen=True)
class ClassWeights:
    """BGA weights of the classes of one categorical raster.

    ``weights[code] = (anthrophony, biophony, geophony)``; ``nodata`` codes are excluded from every
    mean; a code in neither is *unmapped* and is excluded too (callers report it).
    """

    weights: Mapping[int, tuple[float, float, float]]
    names: Mapping[int, str] = field(default_factory=dict)
    nodata: frozenset[int] = frozenset()
    name: str = "custom"


def _as_weight(value: Any, where: str) -> float:
    """A weight in [0, 1], or a ConfigError naming where it came from."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: weight {value!r} is not a number; use values between 0 and 1") from None
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise ConfigError(f"{where}: weight {number} is outside [0, 1]")
    return number


def _as_code(value: Any, where: str) -> int:
    """A non-negative integer class code."""
    try:
        code = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: class code {value!r} is not an integer") from None
    if code < 0 or str(code) != str(value).strip():
        raise ConfigError(f"{where}: class code {value!r} must be a non-negative integer")
    return code


def _triple_from_entry(entry: Mapping[str, Any], where: str) -> tuple[float, float, float]:
    """Read (anthrophony, biophony, geophony) from a YAML mapping that names each weight."""
    missing = [band for band in BANDS if band not in entry]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)} (each class needs anthrophony, biophony, geophony)")
    return tuple(_as_weight(entry[band], f"{where} {band}") for band in BANDS)  # type: ignore[return-value]


def _read_yaml(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """Parse a YAML mapping or raise a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{what} file {path} is not valid YAML: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} file {path} must be a YAML mapping with a 'classes' key")
    return data


def parse_weights(data: Mapping[str, Any], origin: str = "BGA weights") -> ClassWeights:
    """Validate a weight table (the schema of ``bga_worldcover.yaml``) into :class:`ClassWeights`."""
    classes = data.get("classes")
    if not isinstance(classes, dict) or not classes:
        raise ConfigError(f"{origin}: needs a non-empty 'classes' mapping of code -> weights")
    weights: dict[int, tuple[float, float, float]] = {}
    names: dict[int, str] = {}
    for key, entry in classes.items():
        code = _as_code(key, origin)
        if not isinstance(entry, dict):
            raise ConfigError(f"{origin}: class {code} must map to anthrophony/biophony/geophony weights")
        weights[code] = _triple_from_entry(entry, f"{origin} class {code}")
        names[code] = str(entry.get("name", code))
    nodata = frozenset(_as_code(v, f"{origin} nodata") for v in (data.get("nodata") or []))
    overlap = nodata & set(weights)
    if overlap:
        raise ConfigError(f"{origin}: codes {sorted(overlap)} are both nodata and weighted classes")
    return ClassWeights(weights=weights, names=names, nodata=nodata, name=str(data.get("name", "custom")))


def load_weights(path: str | os.PathLike | None = None) -> ClassWeights:
    """The packaged WorldCover table, or a user table with the same schema (``--weights FILE``)."""
    if path is None:
        text = resources.files("soundmap.data").joinpath(DEFAULT_WEIGHTS_RESOURCE).read_text(encoding="utf-8")
        return parse_weights(yaml.safe_load(text), "packaged BGA table")
    return parse_weights(_read_yaml(path, "BGA weights"), f"BGA weights {Path(path).name}")


def load_class_map(path: str | os.PathLike, base: ClassWeights) -> ClassWeights:
    """Map a user raster's class values onto BGA weights (``--class-map YAML``).

    Schema::

        nodata: [255]            # optional: values excluded from the means
        classes:
          1: 10                  # a code of the base table (WorldCover "tree cover") ...
          2: Built-up            # ... or a class name of the base table ...
          3: {anthrophony: 1, biophony: 0, geophony: 0}   # ... or explicit weights

    Referring to the base table keeps one source of truth for the weights (``--weights`` still
    changes them); explicit weights cover classes the table has no equivalent for.
    """
    data = _read_yaml(path, "class map")
    origin = f"class map {Path(path).name}"
    classes = data.get("classes")
    if not isinstance(classes, dict) or not classes:
        raise ConfigError(f"{origin}: needs a non-empty 'classes' mapping of raster value -> class")
    by_name = {name.strip().lower(): code for code, name in base.names.items()}
    weights: dict[int, tuple[float, float, float]] = {}
    names: dict[int, str] = {}
    for key, target in classes.items():
        code = _as_code(key, origin)
        if isinstance(target, dict):
            weights[code] = _triple_from_entry(target, f"{origin} value {code}")
            names[code] = str(target.get("name", code))
            continue
        base_code = by_name.get(str(target).strip().lower()) if isinstance(target, str) else None
        if base_code is None and isinstance(target, int) and not isinstance(target, bool):
            base_code = target
        if base_code is None or base_code not in base.weights:
            known = ", ".join(f"{c} ({n})" for c, n in sorted(base.names.items()))
            raise ConfigError(f"{origin}: value {code} maps to {target!r}, which is not a class of the "
                              f"BGA table; use one of {known} or explicit weights")
        weights[code] = base.weights[base_code]
        names[code] = base.names.get(base_code, str(base_code))
    nodata = frozenset(_as_code(v, f"{origin} nodata") for v in (data.get("nodata") or []))
    return ClassWeights(weights=weights, names=names, nodata=nodata, name=f"{base.name}+{Path(path).stem}")


def class_indices(classes: np.ndarray, table: ClassWeights) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Map class codes to dense indices ``0..K-1`` of the weighted classes, ``K`` for everything else.

    Returns ``(index raster, K × 3 weights, codes)``. Negative codes (the sub-grid's "no source
    here"), nodata codes and codes the table does not know all become ``K`` (invalid).
    """
    codes = sorted(table.weights)
    top = max([*codes, 0])
    lookup = np.full(top + 1, len(codes), dtype=np.int32)
    lookup[codes] = np.arange(len(codes), dtype=np.int32)
    raw = np.asarray(classes)
    inside = (raw >= 0) & (raw <= top)
    index = np.where(inside, lookup[np.where(inside, raw, 0)], len(codes)).astype(np.int32)
    weights = np.array([table.weights[c] for c in codes], dtype=np.float64).reshape(len(codes), 3)
    return index, weights, codes


def class_areas_in_rectangles(index: np.ndarray, n_classes: int, u0: np.ndarray, v0: np.ndarray,
                              u1: np.ndarray, v1: np.ndarray) -> np.ndarray:
    """Exact area (pixel² units) of each class inside axis-aligned rectangles: N × n_classes.

    ``index`` is an H × W raster of class indices (``n_classes`` or more = counted nowhere);
    rectangle i spans columns ``u0[i]..u1[i]`` and rows ``v0[i]..v1[i]`` in *fractional* pixel
    coordinates (0 = the raster's left/top edge), clamped to the raster.

    The cumulative area ``F(u, v) = ∫₀ᵘ∫₀ᵛ [class = k]`` of a raster that is constant per pixel is
    bilinear inside every pixel, so F at any point is the bilinear interpolation of F at the four
    surrounding pixel corners, and a rectangle's area is ``F(u1,v1) − F(u0,v1) − F(u1,v0) + F(u0,v0)``:
    partial pixels count with exactly their covered area; rectangles may overlap. F is only needed
    on the few pixel rows/columns next to rectangle edges, so pixels are binned once (one
    ``bincount`` over strips between those lines × class) instead of building full summed-area
    tables: one pass over the raster, whatever the number of classes or rectangles.
    """
    height, width = index.shape
    u0, v0, u1, v1 = (np.clip(np.asarray(a, dtype=np.float64), 0.0, lim)
                      for a, lim in ((u0, width), (v0, height), (u1, width), (v1, height)))
    col_lines, col_cells = _lattice(np.concatenate([u0, u1]), width)
    row_lines, row_cells = _lattice(np.concatenate([v0, v1]), height)
    n_row_strips, n_col_strips = row_lines.size - 1, col_lines.size - 1
    strip = (row_cells[:, None] * n_col_strips + col_cells[None, :]) * (n_classes + 1)
    label = strip + np.minimum(index, n_classes)
    counts = np.bincount(label.ravel(), minlength=n_row_strips * n_col_strips * (n_classes + 1))
    counts = counts.reshape(n_row_strips, n_col_strips, n_classes + 1)[..., :n_classes].astype(np.float64)
    cumulative = np.zeros((n_row_strips + 1, n_col_strips + 1, n_classes), dtype=np.float64)
    cumulative[1:, 1:] = counts.cumsum(axis=0).cumsum(axis=1)

    def area_to(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        j = np.minimum(np.floor(u).astype(np.int64), max(width - 1, 0))
        i = np.minimum(np.floor(v).astype(np.int64), max(height - 1, 0))
        fu = (u - j)[:, None]
        fv = (v - i)[:, None]
        b = np.searchsorted(col_lines, j)     # j and j + 1 are consecutive lattice lines
        a = np.searchsorted(row_lines, i)
        return (cumulative[a, b] * (1 - fu) * (1 - fv) + cumulative[a, b + 1] * fu * (1 - fv)
                + cumulative[a + 1, b] * (1 - fu) * fv + cumulative[a + 1, b + 1] * fu * fv)

    return area_to(u1, v1) - area_to(u0, v1) - area_to(u1, v0) + area_to(u0, v0)


def _lattice(coords: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel lines needed around fractional coordinates (each floor and the next line, plus both
    raster edges) and, for every pixel column/row, the strip between lines it falls in."""
    floor = np.minimum(np.floor(coords).astype(np.int64), max(size - 1, 0))
    lines = np.unique(np.concatenate([[0, size], floor, floor + 1]))
    lines = lines[(lines >= 0) & (lines <= size)]
    cells = np.searchsorted(lines, np.arange(size), side="right") - 1
    return lines, cells


def bga_means(weighted_sums: np.ndarray, valid_area: np.ndarray) -> np.ndarray:
    """Area-weighted BGA means: ``Σ area·w / Σ valid area`` per band; NaN where nothing is valid.

    ``weighted_sums`` is 3 × N (the footprint integrals of the A, B, G weight planes), ``valid_area``
    is N (the footprint integral of the valid plane). Nodata is thus excluded from the weights: a
    cell that is 30 % water and 70 % nodata gets the water weights, and an all-nodata cell is NaN.
    A tiny relative threshold absorbs floating-point residue of the integral images.
    """
    sums = np.asarray(weighted_sums, dtype=np.float64)
    area = np.asarray(valid_area, dtype=np.float64)
    out = np.full(sums.shape, np.nan, dtype=np.float64)
    has = area > 1e-9
    out[:, has] = sums[:, has] / area[has]
    return np.clip(out, 0.0, 1.0)
