"""Training metadata masks follow the reference's ``create_mask``: exactly int(rate × B) rows
per component per batch, already-invalid rows counted among them."""

from __future__ import annotations

import numpy as np
import pytest

from soundmap.train.batch import BatchBuilder, reference_drop_mask
from soundmap.train.samples import TrainSample

COMPONENTS = ("audio_source", "caption_source", "latlon", "month", "hour")


def _batch() -> list[TrainSample]:
    """5 rows: row 0 is Freesound (no hour); rows 0, 1, 2 have no month; everything else known."""
    rows = []
    for i in range(5):
        freesound = i == 0
        rows.append(TrainSample(key=str(i), lat=10.0 + i, lon=20.0, month=None if i < 3 else 6,
                                hour=None if freesound else 9, audio_source="freesound" if freesound else "iNat",
                                caption_source="meta"))
    return rows


def _kept(meta, name: str) -> np.ndarray:
    values = getattr(meta, name)
    if values is None:
        return np.zeros(5, dtype=bool)
    return np.array([not (v is None or (isinstance(v, float) and np.isnan(v))) for v in values])


def test_mask_counts_already_invalid_rows() -> None:
    rng = np.random.default_rng(7)
    # B = 5, rate 0.5 → int(2.5) = 2 rows masked in all
    all_valid = reference_drop_mask([True] * 5, 0.5, rng)
    assert all_valid.sum() == 3
    one_invalid = reference_drop_mask([False, True, True, True, True], 0.5, rng)
    assert one_invalid.sum() == 3 and not one_invalid[0]          # 1 already + 1 more
    three_invalid = reference_drop_mask([False, False, False, True, True], 0.5, rng)
    assert three_invalid.tolist() == [False, False, False, True, True]   # 3 ≥ 2: nothing more masked
    assert reference_drop_mask([True] * 5, 0.8, rng).sum() == 1     # int(4.0) = 4 masked
    assert reference_drop_mask([True] * 5, 0.0, rng).sum() == 5
    assert reference_drop_mask([True] * 10, 0.29, rng).sum() == 8    # int(2.9) = 2 masked (truncation)


def test_mask_is_a_function_of_the_generator() -> None:
    a = reference_drop_mask([True] * 8, 0.5, np.random.default_rng(3))
    b = reference_drop_mask([True] * 8, 0.5, np.random.default_rng(3))
    assert a.tolist() == b.tolist() and a.sum() == 4


@pytest.mark.parametrize(("rate", "expected"), [
    # kept rows per component for B = 5: audio_source, caption_source, latlon, month, hour
    (0.5, {"audio_source": 3, "caption_source": 3, "lat": 3, "month": 2, "hour": 3}),
    (0.8, {"audio_source": 1, "caption_source": 1, "lat": 1, "month": 1, "hour": 1}),
])
def test_training_batch_masks_exact_counts(rate: float, expected: dict[str, int]) -> None:
    builder = BatchBuilder(family="sentinel", train=True, meta_droprate=rate, metadata_components=COMPONENTS,
                           use_text=False, input_size=16)
    meta = builder._metadata(_batch(), np.random.default_rng(11))
    for name, count in expected.items():
        assert _kept(meta, name).sum() == count, name
    assert (_kept(meta, "lat") == _kept(meta, "lon")).all()          # lat/lon drop together
    assert not _kept(meta, "hour")[0]                               # Freesound never gets an hour
    assert not _kept(meta, "month")[:3].any()                       # invalid rows stay invalid
