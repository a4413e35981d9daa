"""The loop combines the three pair losses as the reference does for the run's dataset.

Crafted GeoCLAP (InfoNCE, tau = 1) embeddings with B = 2 whose pair losses are known by hand:
image = audio = (e1, e2) and text = −image, so the logits are ±identity:
  L_ia = log(1 + e^−1) = 0.3132617 (diagonal 1, off-diagonal 0)
  L_it = L_at = log(1 + e^1) = 1.3132617 (diagonal −1, off-diagonal 0)
GeoSound: 0.5·0.3132617 + 0.5·(1.3132617 + 1.3132617) = 1.4698926
mean (SoundingEarth): (0.3132617 + 2·1.3132617) / 3 = 0.9799284
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from soundmap.errors import InputError
from soundmap.models.embedding import Embedding
from soundmap.train.datasets import ManifestSource
from soundmap.train.forward import BatchEmbeddings
from soundmap.train.loop import Trainer, TrainConfig, resolve_pair_weighting

L_IA = 0.3132617
L_TEXT = 1.3132617
GEOSOUND_TOTAL = 1.4698926
MEAN_TOTAL = 0.9799284


def _crafted() -> BatchEmbeddings:
    image = torch.eye(2, 512)
    return BatchEmbeddings(Embedding.from_raw(image), Embedding.from_raw(image.clone()), Embedding.from_raw(-image))


@pytest.fixture(scope="module")
def google_earth_geoclap():
    from soundmap.models.config import ModelConfig
    from soundmap.models.soundscape import SoundscapeModel

    torch.manual_seed(0)
    model = SoundscapeModel(ModelConfig.tiny(variant="geoclap", family="googleEarth"))
    with torch.no_grad():
        model.criterion.tau.fill_(1.0)
    return model


def _total(model, pair_weighting: str, out: Path) -> tuple[float, dict[str, float]]:
    config = TrainConfig(batch_size=2, max_steps=1, pair_weighting=pair_weighting, prefetch=0)
    trainer = Trainer(model, ManifestSource(pd.DataFrame()), config, out, total_steps=1)
    with torch.no_grad():
        total, parts = trainer.compute_loss(_crafted())
    return float(total), parts


def test_pair_weighting_default_follows_the_released_code() -> None:
    # engine.py's SoundingEarth branch is unreachable as released: every run used the GeoSound rule
    assert resolve_pair_weighting("auto", "googleEarth") == "geosound"
    assert resolve_pair_weighting("auto", "sentinel") == "geosound"
    assert resolve_pair_weighting("auto", "bing") == "geosound"
    assert resolve_pair_weighting("geosound", "googleEarth") == "geosound"
    assert resolve_pair_weighting("mean", "sentinel") == "mean"
    with pytest.raises(InputError, match="--pair-weighting"):
        TrainConfig(pair_weighting="sum")


def test_loop_combines_pairs_by_the_configured_weighting(google_earth_geoclap, tmp_path: Path) -> None:
    mean, parts = _total(google_earth_geoclap, "mean", tmp_path / "mean")
    assert parts["loss_ia"] == pytest.approx(L_IA, abs=1e-6)
    assert parts["loss_it"] == pytest.approx(L_TEXT, abs=1e-6) and parts["loss_at"] == pytest.approx(L_TEXT, abs=1e-6)
    assert mean == pytest.approx(MEAN_TOTAL, abs=1e-6)
    auto, _ = _total(google_earth_geoclap, "auto", tmp_path / "auto")
    assert auto == pytest.approx(GEOSOUND_TOTAL, abs=1e-6)                 # as released, even for SoundingEarth
