"""The image encoder's precision switch: ``auto`` (bf16 autocast on CUDA) or ``fp32`` (the
authors' evaluation). On CPU both are fp32, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from soundmap.errors import InputError
from soundmap.models.config import ModelConfig
from soundmap.models.soundscape import SoundscapeModel, check_precision


@pytest.fixture(scope="module")
def tiny_sentinel() -> SoundscapeModel:
    torch.manual_seed(0)
    return SoundscapeModel(ModelConfig.tiny(variant="psm", family="sentinel", metadata=()))


def _cells() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)


def test_cpu_computes_in_fp32_in_both_modes(tiny_sentinel: SoundscapeModel) -> None:
    assert tiny_sentinel.precision == "auto" and tiny_sentinel.image_precision == "fp32"
    auto = tiny_sentinel.encode_image(_cells(), 1)
    fp32 = tiny_sentinel.set_precision("fp32").encode_image(_cells(), 1)
    assert tiny_sentinel.image_precision == "fp32"
    assert auto.dtype == torch.float32 and torch.equal(auto, fp32)
    with torch.autocast("cpu", dtype=torch.bfloat16):      # a caller's autocast cannot lower fp32
        inside = tiny_sentinel.encode_image(_cells(), 1)
    assert torch.equal(inside, fp32)
    tiny_sentinel.set_precision("auto")


def test_auto_means_bf16_on_cuda_only(tiny_sentinel: SoundscapeModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SoundscapeModel, "device", property(lambda self: torch.device("cuda")))
    assert tiny_sentinel.set_precision("auto").image_precision == "bf16"
    assert tiny_sentinel.set_precision("fp32").image_precision == "fp32"
    tiny_sentinel.set_precision("auto")


def test_unknown_precision_is_a_one_line_input_error() -> None:
    assert check_precision("fp32") == "fp32"
    with pytest.raises(InputError, match="--precision must be auto or fp32") as err:
        check_precision("fp16")
    assert "\n" not in str(err.value)
