"""Fixtures of the train tests: a synthetic geotagged dataset with an injected audio↔image link.

Six classes; class c is a pure tone of ``TONES[c]`` Hz (the audio) recorded where the ground
has colour ``COLOURS[c]`` (the image, with pixel noise), captioned with a class word. A model
that learns anything cross-modal retrieves by class; chance cannot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
import torch
from PIL import Image

TONES = (300.0, 700.0, 1500.0, 3000.0, 5000.0, 8000.0)
COLOURS = ((220, 40, 40), (40, 200, 40), (40, 40, 220), (230, 230, 40), (40, 220, 220), (200, 40, 200))
WORDS = ("bird", "rain", "traffic", "water", "wind", "song")
PER_CLASS_TRAIN = 6
PER_CLASS_TEST = 2


@dataclass(frozen=True)
class SyntheticData:
    manifest: Path
    root: Path
    clap_files: Path
    n_train: int
    n_test: int


def _tone(freq: float, rng: np.random.Generator, rate: int = 16_000, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.4 * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))).astype(np.float32)


def _image(colour: tuple[int, int, int], rng: np.random.Generator, size: int = 32) -> np.ndarray:
    base = np.array(colour, dtype=np.int16)[None, None, :]
    noise = rng.integers(-25, 26, size=(size, size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory, clap_files: Path) -> SyntheticData:
    """48 recordings (36 train / 12 test) as wav + png files and a CSV manifest."""
    root = tmp_path_factory.mktemp("synthetic-geo")
    rng = np.random.default_rng(1234)
    rows = []
    for c, (tone, colour, word) in enumerate(zip(TONES, COLOURS, WORDS)):
        for i in range(PER_CLASS_TRAIN + PER_CLASS_TEST):
            key = f"c{c}_{i}"
            soundfile.write(str(root / f"{key}.wav"), _tone(tone, rng), 16_000, subtype="PCM_16")
            Image.fromarray(_image(colour, rng)).save(root / f"{key}.png")
            rows.append({
                "key": key, "audio": f"{key}.wav", "lat": 10.0 + c + rng.uniform(0, 0.5),
                "lon": 20.0 + i * 0.1, "datetime": f"2021-{1 + c:02d}-10 {6 + i:02d}:30:00",
                "audio_source": ("iNat", "yfcc", "aporee", "freesound")[c % 4],
                "caption": f"the sound of {word}", "image_z1": f"{key}.png", "image_z3": f"{key}.png",
                "image_z5": f"{key}.png", "split": "train" if i < PER_CLASS_TRAIN else "test",
            })
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return SyntheticData(manifest, root, clap_files, 6 * PER_CLASS_TRAIN, 6 * PER_CLASS_TEST)


@pytest.fixture()
def tiny_psm():
    """A tiny PSM model with every metadata component, random weights from a fixed seed."""
    from soundmap.models.config import ModelConfig
    from soundmap.models.soundscape import SoundscapeModel

    torch.manual_seed(0)
    return SoundscapeModel(ModelConfig.tiny(variant="psm", family="sentinel"), name="tiny-train")
