"""The one in-memory shape of a training/evaluation example, whatever it was read from.

Both readers (the authors' WebDataset shards, a user's manifest) produce :class:`TrainSample`;
the batch builder turns samples into model inputs. Fields a source does not have stay ``None``
(a dropped metadata component, no caption, no pre-computed mel features, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class TrainSample:
    """One geotagged recording with its imagery, text and metadata.

    Imagery comes either as ``source_image`` (the large tile the zoom levels are centre-cropped
    from, psm-reference "Image preprocessing") or as ``zoom_images`` (one already rendered image
    per PSM zoom level, e.g. from soundmap's own tile renderer). Audio comes as CLAP
    ``input_features`` alternatives (the authors stored 5 random fusion draws per clip) or as a
    file path / waveform to featurize.
    """

    key: str
    lat: float | None = None
    lon: float | None = None
    month: int | None = None
    hour: int | None = None
    audio_source: str | None = None
    caption_source: str | None = None
    caption: str | None = None
    source_image: np.ndarray | None = None
    zoom_images: dict[int, np.ndarray] = field(default_factory=dict)
    mel_features: list[np.ndarray] = field(default_factory=list)
    is_longer: bool | None = None
    input_ids: np.ndarray | None = None
    attention_mask: np.ndarray | None = None
    audio_path: str | None = None
    waveform: np.ndarray | None = None
    sample_rate: int | None = None
    split: str | None = None

    def has_audio(self) -> bool:
        return bool(self.mel_features) or self.audio_path is not None or self.waveform is not None

    def has_image(self) -> bool:
        return self.source_image is not None or bool(self.zoom_images)

    def has_text(self) -> bool:
        return self.caption is not None or self.input_ids is not None
