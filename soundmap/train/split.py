"""The papers' spatial train/val/test split (PSM supplement A.2; psm-reference.md "Data and splits").

Random splits leak: a test clip recorded 50 m from a training clip shares its imagery and
soundscape. PSM therefore splits *cells*, never samples:

1. Divide the world into 1° × 1° cells (``cell="1deg"``) or ≈10 km × 10 km cells
   (``cell="10km"``, the SoundingEarth variant for small datasets).
2. Cells with at least ``min_count`` (25) samples are candidates; the others all go to train.
3. Candidates are grouped into density terciles at the 0.33 and 0.66 quantiles of their counts
   (pandas linear quantiles; low ≤ q1 < medium ≤ q2 < high, as the reference).
4. In each tercile ``floor(holdout_frac × n_cells)`` cells are held out (10 % for 1°; the
   reference's SoundingEarth script uses 35 % for its 10 km cells, our default there too).
5. Of the held-out cells, ``floor(0.40 × n)`` go to val, the rest to test.
6. Optionally val/test are subsampled to a fixed size matching train's audio-source mix (the
   GeoSound 5,000 / 10,000); rows not drawn are marked ``unused`` (never train: they share
   cells with val/test).

Differences from the reference scripts, on purpose: the generator is a seeded
``numpy.random.Generator`` (so a seed reproduces a split), and 10 km cells are identified by
their (row, column) pair with the longitude width taken at the cell row's central latitude — the
reference encodes ``lat_bin * 360 + lon_bin`` (which collides once a row has more than 360 cells)
and sizes each sample's longitude bin at the sample's own latitude (so bins overlap). Pure
pandas/numpy; no I/O.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..errors import InputError

KM_PER_DEGREE = 111.0
SPLITS = ("train", "val", "test")


def cell_ids_1deg(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """1° cell of each point, as the reference's ``int(lat + 90) * 360 + int(lon + 180)``."""
    lat_bin = np.floor(np.asarray(lat, dtype=np.float64) + 90.0).astype(np.int64)
    lon_bin = np.floor(np.asarray(lon, dtype=np.float64) + 180.0).astype(np.int64)
    return lat_bin * 360 + lon_bin


def cell_ids_km(lat: np.ndarray, lon: np.ndarray, size_km: float = 10.0) -> np.ndarray:
    """Approximately ``size_km`` square cells: latitude rows of ``size_km / 111`` degrees, each row
    cut into longitude columns whose width is ``size_km`` at the row's central latitude.

    Returned as one int64 per point (``row * 10**7 + col``), unique per cell.
    """
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    dlat = size_km / KM_PER_DEGREE
    row = np.floor((lat + 90.0) / dlat).astype(np.int64)
    centre_lat = np.clip(-90.0 + (row + 0.5) * dlat, -89.999, 89.999)
    dlon = size_km / (KM_PER_DEGREE * np.cos(np.radians(centre_lat)))
    col = np.floor((lon + 180.0) / dlon).astype(np.int64)
    return row * 10_000_000 + col


def parse_cell(cell: str) -> tuple[str, float]:
    """``"1deg"`` → ("deg", 1.0); ``"10km"`` → ("km", 10.0); anything else is an InputError."""
    text = cell.strip().lower()
    for unit in ("deg", "km"):
        if text.endswith(unit):
            try:
                size = float(text[: -len(unit)])
            except ValueError:
                break
            if size > 0 and math.isfinite(size):
                return unit, size
    raise InputError(f"--cell expects a size like 1deg or 10km, got {cell!r}")


def assign_cells(lat: np.ndarray, lon: np.ndarray, cell: str = "1deg") -> np.ndarray:
    """Cell id of each point for a cell spec (``1deg`` reproduces the reference exactly)."""
    unit, size = parse_cell(cell)
    if unit == "deg":
        if size == 1.0:
            return cell_ids_1deg(lat, lon)
        lat_bin = np.floor((np.asarray(lat, dtype=np.float64) + 90.0) / size).astype(np.int64)
        lon_bin = np.floor((np.asarray(lon, dtype=np.float64) + 180.0) / size).astype(np.int64)
        return lat_bin * 10_000_000 + lon_bin
    return cell_ids_km(lat, lon, size)


def density_terciles(counts: pd.Series) -> dict[str, pd.Index]:
    """Split candidate cells (index = cell id, value = count) into low/medium/high density."""
    q1 = counts.quantile(0.33)
    q2 = counts.quantile(0.66)
    return {
        "low": counts.index[counts <= q1],
        "medium": counts.index[(counts > q1) & (counts <= q2)],
        "high": counts.index[counts > q2],
    }


def split_cells(cell_ids: np.ndarray, *, seed: int = 0, min_count: int = 25, holdout_frac: float = 0.10,
                val_frac: float = 0.40) -> dict[int, str]:
    """Map every cell id to "train", "val" or "test" following steps 2–5 of the module docstring."""
    rng = np.random.default_rng(seed)
    counts = pd.Series(cell_ids).value_counts().sort_index()
    split = {int(c): "train" for c in counts.index}
    candidates = counts[counts >= min_count]
    if candidates.empty:
        return split
    for name in ("low", "medium", "high"):  # fixed order: the RNG stream is part of the seed contract
        cells = np.sort(density_terciles(candidates)[name].to_numpy())
        held = rng.choice(cells, size=int(holdout_frac * len(cells)), replace=False) if len(cells) else cells
        val = rng.choice(held, size=int(val_frac * len(held)), replace=False) if len(held) else held
        val_set = {int(c) for c in val}
        for c in held:
            split[int(c)] = "val" if int(c) in val_set else "test"
    return split


def sample_matching_mix(frame: pd.DataFrame, train_mix: pd.Series, size: int, source_col: str,
                        rng: np.random.Generator) -> pd.Index:
    """Rows of ``frame`` (≤ ``size``) drawn so the source mix matches ``train_mix`` (fractions).

    As the reference: each source gets ``floor(frac × size)`` rows (capped by availability). The
    shortfall is then filled from the remaining rows at random; the reference instead adds it all
    to iNat (``count_dict_updated['iNat'] += N − total``), which fails when iNat runs short.
    """
    chosen: list[pd.Index] = []
    for source, frac in train_mix.items():
        rows = frame.index[frame[source_col] == source]
        n = min(int(frac * size), len(rows))
        if n:
            chosen.append(pd.Index(rng.choice(rows.to_numpy(), size=n, replace=False)))
    picked = chosen[0].append(chosen[1:]) if chosen else pd.Index([])
    short = min(size, len(frame)) - len(picked)
    if short > 0:
        rest = frame.index.difference(picked)
        picked = picked.append(pd.Index(rng.choice(rest.to_numpy(), size=short, replace=False)))
    return picked


def spatial_split(frame: pd.DataFrame, *, cell: str = "1deg", seed: int = 0, min_count: int = 25,
                  holdout_frac: float | None = None, val_frac: float = 0.40, val_size: int | None = None,
                  test_size: int | None = None, lat_col: str = "lat", lon_col: str = "lon",
                  source_col: str = "audio_source") -> pd.DataFrame:
    """Return a copy of ``frame`` with ``cell_id`` and ``split`` columns (train/val/test/unused).

    ``holdout_frac`` defaults to 0.10 for degree cells and 0.35 for km cells (the reference's
    values). Seeded and deterministic: same frame + same arguments → same split.
    """
    for col in (lat_col, lon_col):
        if col not in frame.columns:
            raise InputError(f"the manifest has no {col!r} column; a spatial split needs latitude and longitude")
    lat = pd.to_numeric(frame[lat_col], errors="coerce").to_numpy(dtype=np.float64)
    lon = pd.to_numeric(frame[lon_col], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(lat) | ~np.isfinite(lon) | (np.abs(lat) > 90) | (np.abs(lon) > 180)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"row {row} of the manifest has no valid lat/lon ({frame[lat_col].iloc[row]!r}, "
                         f"{frame[lon_col].iloc[row]!r}); fix or drop it before splitting")
    unit, _ = parse_cell(cell)
    if holdout_frac is None:
        holdout_frac = 0.10 if unit == "deg" else 0.35
    if not 0 <= holdout_frac <= 1 or not 0 <= val_frac <= 1:
        raise InputError("--holdout-frac and --val-frac must be between 0 and 1")
    out = frame.copy()
    out["cell_id"] = assign_cells(lat, lon, cell)
    mapping = split_cells(out["cell_id"].to_numpy(), seed=seed, min_count=min_count,
                          holdout_frac=holdout_frac, val_frac=val_frac)
    out["split"] = out["cell_id"].map(mapping).astype(object)
    if val_size is not None or test_size is not None:
        _subsample_heldout(out, val_size, test_size, source_col, np.random.default_rng([seed, 1]))
    return out


def _subsample_heldout(out: pd.DataFrame, val_size: int | None, test_size: int | None, source_col: str,
                       rng: np.random.Generator) -> None:
    """Step 6: cap val/test at the given sizes matching train's source mix; the rest → "unused"."""
    train = out[out["split"] == "train"]
    if source_col in out.columns and len(train):
        mix = train[source_col].value_counts(normalize=True).sort_index()
    else:
        mix = pd.Series(dtype=float)
    for name, size in (("val", val_size), ("test", test_size)):
        if size is None:
            continue
        part = out[out["split"] == name]
        if len(part) <= size:
            continue
        if mix.empty:
            keep = pd.Index(rng.choice(part.index.to_numpy(), size=size, replace=False))
        else:
            keep = sample_matching_mix(part, mix, size, source_col, rng)
        out.loc[part.index.difference(keep), "split"] = "unused"


def check_disjoint(frame: pd.DataFrame) -> None:
    """Raise AssertionError if any cell appears in more than one of train/val/test."""
    used = frame[frame["split"].isin(SPLITS)]
    per_cell = used.groupby("cell_id")["split"].nunique()
    if (per_cell > 1).any():
        raise AssertionError(f"cells shared across splits: {list(per_cell.index[per_cell > 1])[:5]}")
