"""Manifest reading: aliases, relative paths, validation errors, sample conversion."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from soundmap.errors import InputError
from soundmap.train.loop import prefetch
from soundmap.train.manifest import read_manifest, row_to_sample


def test_aliases_paths_and_samples(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "m.csv"
    path.parent.mkdir()
    pd.DataFrame({"Path": ["a.wav", "/abs/b.flac"], "Latitude": [10.0, None], "lng": [20.0, 21.0],
                  "date": ["2020-06-01 23:10", "2020-07-01"], "source": ["Freesound", "inaturalist"],
                  "text": ["rain", None]}).to_csv(path, index=False)
    frame = read_manifest(path)
    assert frame["audio"].tolist() == [str(path.parent.resolve() / "a.wav"), "/abs/b.flac"]
    assert frame["key"].tolist() == ["0", "1"]
    a, b = (row_to_sample(r) for _, r in frame.iterrows())
    assert (a.lat, a.lon, a.month, a.hour) == (10.0, 20.0, 6, None)  # Freesound: hour dropped
    assert a.audio_source == "freesound" and a.caption == "rain" and a.caption_source == "meta"
    assert b.lat is None and b.audio_source == "iNat" and b.caption is None and b.caption_source is None


def test_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_manifest(tmp_path / "nope.csv")
    missing = tmp_path / "missing.csv"
    pd.DataFrame({"audio": ["a.wav"], "lat": [1.0]}).to_csv(missing, index=False)
    with pytest.raises(InputError, match="lon"):
        read_manifest(missing)
    dup = tmp_path / "dup.csv"
    pd.DataFrame({"audio": ["a", "b"], "lat": [1, 2], "lon": [1, 2], "key": ["x", "x"]}).to_csv(dup, index=False)
    with pytest.raises(InputError, match="more than once"):
        read_manifest(dup)


def test_prefetch_keeps_order_and_raises_producer_errors() -> None:
    assert list(prefetch(iter(range(20)), 3)) == list(range(20))
    assert list(prefetch(iter(range(5)), 0)) == list(range(5))

    def broken():
        yield 1
        raise InputError("bad row")

    out = prefetch(broken(), 2)
    assert next(out) == 1
    with pytest.raises(InputError, match="bad row"):
        next(out)
