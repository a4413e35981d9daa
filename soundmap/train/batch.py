"""Samples → model inputs, with the PSM training randomness drawn from explicit generators.

Per sample, in training (psm-reference "Image preprocessing", "Metadata and fusion"):
a zoom level uniform in {1, 3, 5} (only 1 for googleEarth imagery, as the authors), the
zoom-level image through RandomResizedCrop + flip + ImageNet normalisation, one of the stored mel
draws at random; per batch, each metadata component masked in exactly ``int(0.5 × B)`` rows
(the reference's ``create_mask``, see :func:`reference_drop_mask`).
In evaluation: a fixed zoom, the models' eval transform, mel draw 0, the chosen components.

Every random choice comes from a ``numpy.random.Generator`` derived from ``(seed, epoch,
position in epoch)`` (per sample, and per batch for the metadata masks), never from a global
RNG, so a resumed run draws the same augmentations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..families import get_family
from ..preprocess.metadata import Metadata
from .imagery import ImageProvider, image_for
from .samples import TrainSample
from .transforms import train_augment

METADATA_FIELDS: dict[str, tuple[str, ...]] = {
    "audio_source": ("audio_source",), "caption_source": ("caption_source",), "latlon": ("lat", "lon"),
    "month": ("month",), "hour": ("hour",),
}


@dataclass
class Batch:
    """Model inputs for B aligned samples (row i of every field is sample i)."""

    keys: list[str]
    pixels: torch.Tensor                # B × 3 × 224 × 224, ImageNet-normalised
    zooms: torch.Tensor                 # B (long)
    metadata: Metadata                  # per-row values; None entries = dropped for that row
    input_features: torch.Tensor | None = None   # B × 4 × 1001 × 64
    is_longer: torch.Tensor | None = None        # B (bool)
    input_ids: torch.Tensor | None = None        # B × 128
    attention_mask: torch.Tensor | None = None   # B × 128

    def __len__(self) -> int:
        return len(self.keys)

    def to(self, device: torch.device | str) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return Batch(self.keys, move(self.pixels), move(self.zooms), self.metadata, move(self.input_features),
                     move(self.is_longer), move(self.input_ids), move(self.attention_mask))


def sample_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The generator of one sample's random choices, a pure function of where it is in the run."""
    return np.random.default_rng([seed, epoch, position, 0x5D])


def batch_rng(seed: int, epoch: int, first_position: int) -> np.random.Generator:
    """The generator of one batch's metadata masks, a pure function of its first sample's place."""
    return np.random.default_rng([seed, epoch, first_position, 0xBA])


def reference_drop_mask(valid: Sequence[bool] | np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Rows of one metadata component kept in a training batch (True = kept), as the reference.

    Reproduces the authors' ``create_mask`` (models/metadata_encoder.py) rather than an
    independent per-row coin: exactly ``int(rate × B)`` rows of the batch end up masked, and rows
    already invalid (unknown value, e.g. Freesound's missing time of day) count towards that
    number; only the shortfall is masked, chosen uniformly among the valid rows. If the invalid
    rows already reach the target, the valid rows are all kept.
    """
    keep = np.asarray(valid, dtype=bool).copy()
    shortfall = int(rate * len(keep)) - int((~keep).sum())
    if shortfall > 0:
        keep[rng.permutation(np.flatnonzero(keep))[:shortfall]] = False
    return keep


@dataclass
class BatchBuilder:
    """Turns samples into a :class:`Batch` for a model of imagery ``family``.

    ``featurizer``/``tokenizer`` are the CLAP engineer's :class:`AudioFeaturizer` and
    :class:`TextTokenizer` (only needed when samples carry raw audio / captions).
    ``metadata_components`` are the model's components; ``keep_components`` (evaluation) those
    given to the model — the rest are dropped for every row. In training, ``meta_droprate`` is the
    fraction of each batch masked per component (:func:`reference_drop_mask`).
    """

    family: str
    train: bool
    zooms: Sequence[int] = (1, 3, 5)
    eval_zoom: int = 1
    meta_droprate: float = 0.5
    metadata_components: Sequence[str] = ()
    keep_components: Sequence[str] | None = None
    mel_index: int = 0
    use_text: bool = True
    featurizer: object | None = None
    tokenizer: object | None = None
    image_provider: ImageProvider | None = None
    input_size: int = 224
    feature_cache_size: int = 256
    _feature_cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.family = get_family(self.family).name
        if self.family == "googleEarth":
            self.zooms = (1,)  # the authors train SoundingEarth (googleEarth) at zoom 1 only

    # -- images ----------------------------------------------------------------------------
    def _pixels(self, sample: TrainSample, zoom: int, rng: np.random.Generator) -> torch.Tensor:
        image = image_for(sample, zoom, self.family, self.image_provider)
        if self.train:
            return train_augment(image, rng, size=self.input_size)
        return eval_pixels(image, self.input_size)

    # -- metadata --------------------------------------------------------------------------
    def _metadata(self, samples: Sequence[TrainSample], rng: np.random.Generator | None = None) -> Metadata:
        """Per-row metadata with the dropped components set to None; ``rng`` draws the training
        masks (components in a fixed order, so the stream is stable)."""
        values: dict[str, list] = {name: [getattr(s, name) for s in samples]
                                   for name in ("lat", "lon", "month", "hour", "audio_source", "caption_source")}
        keep = set(self.metadata_components if self.keep_components is None else self.keep_components)
        for component, names in METADATA_FIELDS.items():
            if self.train:
                valid = [not any(_missing(getattr(s, n)) for n in names) for s in samples]
                kept = reference_drop_mask(valid, self.meta_droprate, rng)
            else:
                kept = np.full(len(samples), component in keep)
            for name in names:
                values[name] = [v if k else None for v, k in zip(values[name], kept)]
        for name in ("lat", "lon", "month", "hour"):
            values[name] = [np.nan if v is None else float(v) for v in values[name]]
        kwargs = {name: (None if all(_missing(v) for v in vals) else vals) for name, vals in values.items()}
        if (kwargs["lat"] is None) != (kwargs["lon"] is None):
            kwargs["lat"] = kwargs["lon"] = None
        return Metadata(**kwargs)

    # -- audio / text ----------------------------------------------------------------------
    def _audio(self, samples: Sequence[TrainSample], rngs: Sequence[np.random.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        features, longer = [], []
        for sample, rng in zip(samples, rngs):
            if sample.mel_features:
                index = int(rng.integers(len(sample.mel_features))) if self.train else \
                    min(self.mel_index, len(sample.mel_features) - 1)
                features.append(torch.as_tensor(np.asarray(sample.mel_features[index], dtype=np.float32)))
                longer.append(True if sample.is_longer is None else bool(sample.is_longer))
                continue
            if self.featurizer is None:
                raise RuntimeError("samples carry raw audio but no AudioFeaturizer was given")
            mel, is_longer = self._featurize(sample)
            features.append(mel)
            longer.append(is_longer)
        return torch.stack(features), torch.tensor(longer, dtype=torch.bool)

    def _featurize(self, sample: TrainSample) -> tuple[torch.Tensor, bool]:
        """CLAP features of a raw clip. The featurizer seeds its fusion draws per clip, so a
        file's features never change: they are cached by path (1 MB each, ``feature_cache_size``
        clips) instead of being recomputed every epoch."""
        path = sample.audio_path
        if path is not None and path in self._feature_cache:
            return self._feature_cache[path]
        item = path if path is not None else (sample.waveform, sample.sample_rate)
        out = self.featurizer(item if isinstance(item, str) else [item])
        result = (out["input_features"][0], bool(out["is_longer"][0]))
        if path is not None and len(self._feature_cache) < self.feature_cache_size:
            self._feature_cache[path] = result
        return result

    def _text(self, samples: Sequence[TrainSample]) -> tuple[torch.Tensor, torch.Tensor]:
        if all(s.input_ids is not None for s in samples):
            ids = torch.as_tensor(np.stack([s.input_ids for s in samples]), dtype=torch.long)
            masks = [s.attention_mask if s.attention_mask is not None else (s.input_ids != 1) for s in samples]
            return ids, torch.as_tensor(np.stack(masks), dtype=torch.long)
        if self.tokenizer is None:
            raise RuntimeError("samples carry captions but no TextTokenizer was given")
        out = self.tokenizer([s.caption or "" for s in samples])
        return out["input_ids"], out["attention_mask"]

    # -- all together ----------------------------------------------------------------------
    def build(self, samples: Sequence[TrainSample], rngs: Sequence[np.random.Generator],
              metadata_rng: np.random.Generator | None = None) -> Batch:
        """A batch; ``rngs`` are the samples' generators, ``metadata_rng`` the batch's mask
        generator (training; default: spawned from the first sample's, which it leaves as is)."""
        if self.train and metadata_rng is None:
            metadata_rng = rngs[0].spawn(1)[0]
        zooms = [int(self.zooms[int(rng.integers(len(self.zooms)))]) if self.train else self.eval_zoom
                 for rng in rngs]
        pixels = torch.stack([self._pixels(s, z, rng) for s, z, rng in zip(samples, zooms, rngs)])
        metadata = self._metadata(samples, metadata_rng)
        features, longer = self._audio(samples, rngs)
        ids = mask = None
        if self.use_text and any(s.has_text() for s in samples):
            ids, mask = self._text(samples)  # a sample without a caption gets the empty text
        return Batch([s.key for s in samples], pixels, torch.tensor(zooms, dtype=torch.long), metadata,
                     features, longer, ids, mask)


def eval_pixels(image: np.ndarray | torch.Tensor, size: int = 224) -> torch.Tensor:
    """The models' eval transform (resize shorter side, centre crop, ImageNet normalisation) of
    one image: H × W × 3 uint8, or 3 × H × W float in [0, 1] (a zoom crop)."""
    from ..preprocess.image import center_crop, eval_transform, normalize_imagenet, resize_shorter_side

    if isinstance(image, np.ndarray) or image.dtype == torch.uint8:
        return eval_transform(image, size)[0]
    x = image.to(torch.float32).unsqueeze(0)
    return normalize_imagenet(center_crop(resize_shorter_side(x, size), size))[0]


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))
