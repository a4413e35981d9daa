"""The spatial split: disjoint cells, density terciles, reproducible with a seed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from soundmap.errors import InputError
from soundmap.train.split import assign_cells, check_disjoint, parse_cell, spatial_split


def _frame() -> pd.DataFrame:
    """150 dense 1° cells with 25..174 samples each (one count per cell) + 30 sparse cells."""
    rows = []
    rng = np.random.default_rng(0)
    for i, count in enumerate(range(25, 175)):
        lat0, lon0 = -60 + (i // 30) * 2, -170 + (i % 30) * 2
        for _ in range(count):
            rows.append((lat0 + rng.uniform(0.01, 0.99), lon0 + rng.uniform(0.01, 0.99), "iNat"))
    for i in range(30):
        for _ in range(3):
            rows.append((40 + rng.uniform(0.01, 0.99), -170 + i * 2 + rng.uniform(0.01, 0.99), "yfcc"))
    return pd.DataFrame(rows, columns=["lat", "lon", "audio_source"])


def test_one_degree_cells_match_reference_formula() -> None:
    ids = assign_cells(np.array([0.5, -0.5, 89.9]), np.array([0.5, -179.5, 179.9]))
    # int(lat + 90) * 360 + int(lon + 180)
    assert ids.tolist() == [90 * 360 + 180, 89 * 360 + 0, 179 * 360 + 359]


def test_split_counts_terciles_and_disjoint() -> None:
    out = spatial_split(_frame(), seed=1)
    check_disjoint(out)
    cells = out.groupby("cell_id")["split"].first()
    # counts 25..174: q1 = 74.17, q2 = 123.34 -> terciles of 50 / 49 / 51 cells;
    # held out int(0.1 n) = 5 / 4 / 5 = 14 cells; val int(0.4 held) = 2 / 1 / 2 = 5 cells
    assert (cells == "val").sum() == 5
    assert (cells == "test").sum() == 9
    sparse = out[out["audio_source"] == "yfcc"]
    assert (sparse["split"] == "train").all()          # cells under 25 samples always train
    assert set(out["split"]) == {"train", "val", "test"}


def test_split_reproducible_and_seed_dependent() -> None:
    frame = _frame()
    a = spatial_split(frame, seed=7)
    b = spatial_split(frame, seed=7)
    c = spatial_split(frame, seed=8)
    assert a["split"].tolist() == b["split"].tolist()
    assert a["split"].tolist() != c["split"].tolist()


def test_subsampling_matches_train_mix_and_marks_unused() -> None:
    frame = _frame()
    frame.loc[frame.index % 4 == 0, "audio_source"] = "freesound"
    out = spatial_split(frame, seed=3, val_size=40, test_size=60)
    assert (out["split"] == "val").sum() == 40
    assert (out["split"] == "test").sum() == 60
    assert (out["split"] == "unused").sum() > 0
    check_disjoint(out)


def test_ten_km_cells() -> None:
    lat = np.array([45.0, 45.01, 45.0, 45.2])
    lon = np.array([7.0, 7.01, 7.3, 7.0])   # ~1 km apart, ~24 km east, ~22 km north
    ids = assign_cells(lat, lon, "10km")
    assert ids[0] == ids[1]
    assert len({ids[0], ids[2], ids[3]}) == 3
    assert parse_cell("10km") == ("km", 10.0)


def test_bad_input() -> None:
    with pytest.raises(InputError):
        parse_cell("ten")
    with pytest.raises(InputError):
        spatial_split(pd.DataFrame({"lat": [100.0], "lon": [0.0]}))
    with pytest.raises(InputError):
        spatial_split(pd.DataFrame({"x": [1.0]}))
