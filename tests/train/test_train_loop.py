"""Training on the synthetic dataset: it learns, resumes exactly, exports a loadable model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from soundmap.preprocess.audio import AudioFeaturizer
from soundmap.preprocess.text import TextTokenizer
from soundmap.train.datasets import ManifestSource
from soundmap.train.evaluate import EvalOptions, evaluate_model
from soundmap.train.loop import Trainer, TrainConfig, latest_checkpoint, lr_factor
from soundmap.train.setup import export_model


def _helpers(data) -> dict:
    return {"featurizer": AudioFeaturizer(data.clap_files), "tokenizer": TextTokenizer(data.clap_files)}


def test_training_learns_the_injected_correspondence(synthetic_data, tmp_path: Path) -> None:
    """GeoCLAP (InfoNCE), CLAP frozen: a dozen steps take retrieval on held-out samples far
    above chance (chance: median rank 6.5 of 12, R@3 = 2/12)."""
    from soundmap.models.config import ModelConfig
    from soundmap.models.soundscape import SoundscapeModel

    torch.manual_seed(0)
    model = SoundscapeModel(ModelConfig.tiny(variant="geoclap", family="sentinel"))
    helpers = _helpers(synthetic_data)
    train = ManifestSource.from_path(synthetic_data.manifest, "train")
    test = ManifestSource.from_path(synthetic_data.manifest, "test")
    config = TrainConfig(batch_size=12, lr=2e-3, warmup_steps=0, schedule="constant", max_steps=12,
                         freeze_clap=True, checkpoint_every=0, log_every=1, val_every=6)
    trainer = Trainer(model, train, config, tmp_path / "run", val_source=test, **helpers)
    history = trainer.fit()
    losses = [h.loss for h in history]
    assert len(losses) == 12 and np.mean(losses[-3:]) < losses[0]
    report = evaluate_model(model, test, EvalOptions(k=3, batch_size=12), **helpers)
    assert report.i2a.gallery_size == 12
    for direction in (report.i2a, report.a2i):
        assert direction.median_rank <= 3.5          # chance 6.5
        assert direction.recall_at_k >= 0.5          # chance 2/12
    log = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert list(log["step"]) == list(range(1, 13)) and log["samples_per_s"].gt(0).all()
    validated = log.dropna(subset=["val_i2a_mdr"])
    assert list(validated["step"]) == [6, 12]
    assert validated["val_i2a_mdr"].iloc[-1] == report.i2a.median_rank    # same model, same protocol
    assert validated["val_a2i_r10pct"].iloc[-1] == report.a2i.recall_at_10pct


def _psm_trainer(data, out: Path, helpers: dict) -> Trainer:
    from soundmap.models.config import ModelConfig
    from soundmap.models.soundscape import SoundscapeModel

    torch.manual_seed(0)
    model = SoundscapeModel(ModelConfig.tiny(variant="psm", family="sentinel"))
    config = TrainConfig(batch_size=4, lr=1e-3, warmup_steps=2, max_steps=4, checkpoint_every=2,
                         keep_checkpoints=5, log_every=1, seed=11)
    rows = ManifestSource.from_path(data.manifest, "train").frame.iloc[::3]   # 12 rows, all classes
    return Trainer(model, ManifestSource(rows), config, out, **helpers)


def test_resume_reproduces_the_uninterrupted_run_exactly(synthetic_data, tmp_path: Path) -> None:
    """PSM with every metadata component, CLAP fine-tuned, text on, dropout on: 4 steps straight
    vs 2 steps + resume from the step-2 checkpoint. 12 samples / batch 4 = 3 batches an epoch,
    so the resumed part crosses an epoch boundary (new shuffle, new augmentation draws)."""
    helpers = _helpers(synthetic_data)
    straight = _psm_trainer(synthetic_data, tmp_path / "a", helpers)
    full = [h.loss for h in straight.fit()]
    assert len(full) == 4
    ckpt = tmp_path / "a" / "checkpoints" / "step-00000002.pt"
    assert ckpt.is_file() and latest_checkpoint(tmp_path / "a").name == "step-00000004.pt"

    resumed = _psm_trainer(synthetic_data, tmp_path / "b", helpers)
    torch.manual_seed(999)  # the checkpoint must restore every RNG, whatever happened before
    np.random.seed(999)
    resumed.load_checkpoint(ckpt)
    assert (resumed.step, resumed.epoch, resumed.position) == (2, 0, 8)
    tail = [h.loss for h in resumed.fit()]
    assert tail == full[2:]
    assert straight.epoch == 1                       # the run did cross into epoch 1
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_export_installs_a_loadable_model(synthetic_data, tiny_psm, tmp_path: Path) -> None:
    from soundmap.models.soundscape import load_model

    path = export_model(tiny_psm, "my-psm")
    loaded = load_model("my-psm", device="cpu")
    assert path.name == "my-psm" and loaded.name == "my-psm"
    for key, value in tiny_psm.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])


def test_lr_schedules() -> None:
    assert lr_factor(0, warmup=4, total=12, schedule="cosine") == pytest.approx(0.25)
    assert lr_factor(3, warmup=4, total=12, schedule="cosine") == pytest.approx(1.0)
    assert lr_factor(8, warmup=4, total=12, schedule="cosine") == pytest.approx(0.5)   # half-way down
    assert lr_factor(12, warmup=4, total=12, schedule="cosine") == pytest.approx(0.0)
    # the authors' CosineAnnealingWarmRestarts(T_0=4): 1, cos-down, back to 1 at step 4
    assert lr_factor(2, warmup=4, total=12, schedule="restarts") == pytest.approx(0.5)
    assert lr_factor(4, warmup=4, total=12, schedule="restarts") == pytest.approx(1.0)
