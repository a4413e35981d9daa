"""Metadata encodings against values computed by hand from the reference formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from soundmap.errors import InputError
from soundmap.preprocess.metadata import (
    Metadata,
    audio_source_index,
    caption_source_index,
    encode_hour,
    encode_latlon,
    encode_month,
)

ALL = ("audio_source", "caption_source", "latlon", "month", "hour")


def test_latlon_encoding_hand_values() -> None:
    # lat 45 → π/2: (1, 0); lon 90 → π/2: (1, 0); lat −90 → −π: (0, −1); lon 180 → π: (0, −1)
    got = encode_latlon(torch.tensor([45.0, -90.0]), torch.tensor([90.0, 180.0]))
    want = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, -1.0]])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-7, rtol=0)


def test_month_encoding_hand_values() -> None:
    # m=3 → 2π·3/12 = π/2: (1, 0); m=6 → π: (0, −1); m=12 → 2π: (0, 1)
    got = encode_month(torch.tensor([3.0, 6.0, 12.0]))
    torch.testing.assert_close(got, torch.tensor([[1.0, 0.0], [0.0, -1.0], [0.0, 1.0]]), atol=1e-7, rtol=0)


def test_hour_encoding_keeps_the_divide_by_23_quirk() -> None:
    # h=23 → 2π·23/23 = 2π: (0, 1), the same as h=0; h=6 → 2π·6/23 = 1.63908… rad:
    # sin = 0.9976688, cos = −0.0682424 (with /24 it would have been (1, 0)).
    got = encode_hour(torch.tensor([0.0, 23.0, 6.0]))
    want = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.9976687691905392, -0.06824241336467088]])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_source_indices_case_insensitive_and_unknown_is_one_line() -> None:
    assert [audio_source_index(s) for s in ("yfcc", "INAT", "aporee", "FreeSound")] == [0, 1, 2, 3]
    assert [caption_source_index(s) for s in ("meta", "Qwen", "pengi")] == [0, 1, 2]
    with pytest.raises(InputError) as err:
        audio_source_index("xeno-canto")
    assert "yfcc, iNat, aporee, freesound" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("kwargs", [dict(month=13), dict(month=0), dict(hour=24), dict(hour=-1),
                                    dict(lat=91, lon=0), dict(lat=10), dict(caption_source="gpt"),
                                    dict(month=[1, 2], hour=[1, 2, 3])])
def test_invalid_metadata_is_an_input_error(kwargs: dict) -> None:
    with pytest.raises(InputError):
        Metadata(**kwargs)


def test_encode_scalars_sequences_and_per_row_drops() -> None:
    meta = Metadata(lat=[0.0, 45.0, float("nan")], lon=[0.0, 90.0, 10.0], month=3, hour=None,
                    audio_source=["yfcc", None, "freesound"], caption_source=None)
    tokens = meta.encode(3, ALL)
    assert set(tokens) == {"audio_source", "latlon", "month"}  # None fields are dropped entirely
    assert tokens["audio_source"].values.tolist() == [0, 0, 3]
    assert tokens["audio_source"].valid.tolist() == [True, False, True]
    assert tokens["latlon"].valid.tolist() == [True, True, False]
    torch.testing.assert_close(tokens["latlon"].values[1], torch.tensor([1.0, 0.0, 1.0, 0.0]), atol=1e-7, rtol=0)
    assert tokens["month"].valid.all() and tokens["month"].values.shape == (3, 2)
    # only the model's components are encoded
    assert set(meta.encode(3, ("month",))) == {"month"}
    with pytest.raises(InputError):
        meta.encode(4, ALL)


def test_numpy_and_tensor_inputs() -> None:
    meta = Metadata(month=np.array([1, 12]), hour=torch.tensor([0, 23]))
    tokens = meta.encode(2, ALL)
    torch.testing.assert_close(tokens["hour"].values, torch.tensor([[0.0, 1.0], [0.0, 1.0]]), atol=1e-6, rtol=0)
    assert math.isclose(float(tokens["month"].values[1, 1]), 1.0, abs_tol=1e-7)
