"""A plain manifest (CSV or Parquet) describing a user's own geotagged recordings.

One row per recording. Columns (aliases in brackets; only the first three are required):

==================  ===============================================================
``audio``           path of the audio file, absolute or relative to the manifest
                    [``audio_path``, ``path``, ``file``]
``lat``, ``lon``    recording location, WGS84 degrees [``latitude``, ``longitude``/``lng``]
``datetime``        when it was recorded (any format pandas parses; the hour is used only
                    if a time of day is written) [``date``, ``timestamp``]
``month``/``hour``  explicit month 1–12 / hour 0–23 (override ``datetime``)
``audio_source``    yfcc, iNat, aporee or freesound [``source``]; others = unknown
``caption``         a text describing the audio [``text``]
``caption_source``  meta, qwen or pengi (default ``meta`` when a caption is given)
``key``             a unique id (default: the row number) [``id``, ``sample_id``]
``split``           train / val / test (``soundmap data split`` writes it)
``image``           optional pre-rendered source tile (zoom levels are centre crops of it)
``image_z1/3/5``    optional pre-rendered image per PSM zoom level
==================  ===============================================================

Rows without image columns get their imagery rendered by soundmap's own tiles code at the
recording's location (see :mod:`soundmap.train.imagery`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from .samples import TrainSample
from .webdataset import _opt_float, canonical_audio_source, parse_month_hour

ALIASES: dict[str, tuple[str, ...]] = {
    "audio": ("audio", "audio_path", "path", "file"),
    "lat": ("lat", "latitude"),
    "lon": ("lon", "longitude", "lng"),
    "datetime": ("datetime", "date", "timestamp"),
    "month": ("month",),
    "hour": ("hour",),
    "audio_source": ("audio_source", "source"),
    "caption": ("caption", "text"),
    "caption_source": ("caption_source",),
    "key": ("key", "id", "sample_id"),
    "split": ("split",),
    "image": ("image",),
    "image_z1": ("image_z1",),
    "image_z3": ("image_z3",),
    "image_z5": ("image_z5",),
}
REQUIRED = ("audio", "lat", "lon")


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file (by extension) with a one-line error for anything else."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"manifest not found: {path}")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except (OSError, ValueError, ImportError) as exc:
        raise InputError(f"cannot read manifest {path}: {str(exc).splitlines()[0]}") from None


def normalize_columns(frame: pd.DataFrame, *, require_audio: bool = True) -> pd.DataFrame:
    """Rename alias columns to the canonical names; check the required ones are there."""
    lower = {c.lower().strip(): c for c in frame.columns}
    renames = {}
    for canonical, names in ALIASES.items():
        for name in names:
            if name in lower:
                renames[lower[name]] = canonical
                break
    out = frame.rename(columns=renames)
    required = REQUIRED if require_audio else ("lat", "lon")
    missing = [c for c in required if c not in out.columns]
    if missing:
        raise InputError(f"the manifest lacks column(s) {', '.join(missing)} "
                         f"(expected at least: {', '.join(required)})")
    return out


def read_manifest(path: str | Path, *, require_audio: bool = True) -> pd.DataFrame:
    """Read and normalise a manifest; relative file paths are resolved against its directory."""
    path = Path(path).expanduser()
    frame = normalize_columns(read_table(path), require_audio=require_audio)
    if frame.empty:
        raise InputError(f"manifest {path} has no rows")
    base = path.resolve().parent
    for col in ("audio", "image", "image_z1", "image_z3", "image_z5"):
        if col in frame.columns:
            frame[col] = [_resolve(base, v) for v in frame[col]]
    if "key" not in frame.columns:
        frame["key"] = [str(i) for i in range(len(frame))]
    frame["key"] = frame["key"].astype(str)
    if frame["key"].duplicated().any():
        dup = frame["key"][frame["key"].duplicated()].iloc[0]
        raise InputError(f"manifest key {dup!r} appears more than once; keys must be unique")
    return frame


def _resolve(base: Path, value: object) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
        return None
    p = Path(str(value)).expanduser()
    return str(p if p.is_absolute() else base / p)


def _cell(row: pd.Series, name: str) -> object:
    value = row.get(name)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return value


def row_to_sample(row: pd.Series) -> TrainSample:
    """One manifest row → a TrainSample (images are loaded lazily by the dataset)."""
    month, hour = parse_month_hour(_cell(row, "datetime"))
    if _cell(row, "month") is not None:
        month = int(row["month"])
    if _cell(row, "hour") is not None:
        hour = int(row["hour"])
    source = canonical_audio_source(_cell(row, "audio_source"))
    if source == "freesound":
        hour = None  # as the reference: no time of day for Freesound
    caption = _cell(row, "caption")
    return TrainSample(
        key=str(row["key"]),
        lat=_opt_float(row["lat"]),
        lon=_opt_float(row["lon"]),
        month=month,
        hour=hour,
        audio_source=source,
        caption=None if caption is None else str(caption),
        caption_source=(str(_cell(row, "caption_source") or "meta") if caption is not None else None),
        audio_path=_cell(row, "audio"),  # type: ignore[arg-type]
        split=_cell(row, "split"),  # type: ignore[arg-type]
    )
