"""Sat2Sound configuration (``config.json`` of an installed Sat2Sound model).

Sat2Sound (mvrl/sat2sound, MIT) is the PSM authors' successor: the SatMAE ViT-B/16 with the GSD
positional embedding (as PSM) but keeping all 196 patch tokens, a per-token projector to 1024,
per-token metadata fusion, an HTS-AT audio tower whose *fine-grained* 32 time tokens are used, a
frozen FlanT5-large text encoder outside the checkpoint, and a shared codebook of 16,000
"soundscape concepts" through which every modality is pooled (max over tokens, sparsemax over
codes) into one 1024-d embedding scored by cosine.

``variant`` is always ``sat2sound``; ``family`` is the imagery family (sentinel, bing,
googleEarth) exactly as for PSM/GeoCLAP, so tile planning and zoom semantics are shared.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from soundmap.errors import ConfigError
from soundmap.families import get_family
from soundmap.models.config import FusionConfig, ModelConfig, ViTConfig, normalize_components

VARIANT = "sat2sound"
#: Bump when a Sat2Sound transform changes, so cached cells made with another version are stale.
PREPROCESS_VERSION = "s2s-1"
CONFIG_FORMAT_VERSION = 1
#: The frozen text encoder the released checkpoints were trained with (Apache-2.0).
T5_REPO_ID = "google/flan-t5-large"


@dataclass(frozen=True)
class HTSATConfig:
    """The HTS-AT (Swin) audio tower: mel bins in, 4 stages, window 8, output width 768."""

    mel_bins: int = 64
    spec_size: int = 256
    freq_ratio: int = 4
    patch_size: int = 4
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 8
    mlp_ratio: float = 4.0
    classes: int = 527

    @property
    def out_dim(self) -> int:
        """Width of the last stage (768 for the released tower)."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @property
    def time_frames(self) -> int:
        """Mel frames after the interpolation that precedes the image reshape (1024)."""
        return self.spec_size * self.freq_ratio

    @property
    def out_tokens(self) -> int:
        """Time tokens of the fine-grained output (32 for the released tower)."""
        final = self.spec_size // self.patch_size // 2 ** (len(self.depths) - 1)
        return final * self.freq_ratio


@dataclass(frozen=True)
class MelConfig:
    """The torchlibrosa log-mel front end (its STFT kernels and mel matrix are in the checkpoint)."""

    sample_rate: int = 32_000
    n_fft: int = 1024
    hop_length: int = 320
    n_mels: int = 64
    fmin: float = 50.0
    fmax: float = 14_000.0
    clip_seconds: float = 10.0

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))

    @property
    def frames(self) -> int:
        """Frames of a padded 10 s clip with ``center=True`` (1001)."""
        return self.clip_samples // self.hop_length + 1


@dataclass(frozen=True)
class Sat2SoundConfig:
    """Everything needed to rebuild a Sat2Sound model; JSON round-trips like :class:`ModelConfig`."""

    family: str
    metadata: tuple[str, ...] = ()
    fc_dim: int = 1024
    codebook_size: int = 16_000
    codebook_dim: int = 1024
    text_dim: int = 1024
    vit: ViTConfig = field(default_factory=ViTConfig)
    fusion: FusionConfig = field(default_factory=lambda: FusionConfig(3, 8, 2048, 64))
    htsat: HTSATConfig = field(default_factory=HTSATConfig)
    mel: MelConfig = field(default_factory=MelConfig)
    t5_repo: str = T5_REPO_ID
    variant: str = VARIANT
    preprocess_version: str = PREPROCESS_VERSION
    name: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    format_version: int = CONFIG_FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.variant != VARIANT:
            raise ConfigError(f"not a Sat2Sound config (variant {self.variant!r})")
        object.__setattr__(self, "family", get_family(self.family).name)
        object.__setattr__(self, "metadata", normalize_components(self.metadata))

    # -- facts shared with ModelConfig (the pipeline reads these) --------------------------------
    @property
    def probabilistic(self) -> bool:
        return False

    @property
    def default_score(self) -> str:
        return "cosine"

    family_info = ModelConfig.family_info
    gsd = ModelConfig.gsd

    @property
    def num_patches(self) -> int:
        return self.vit.grid_size ** 2

    # -- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["metadata"] = list(self.metadata)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sat2SoundConfig:
        try:
            payload = dict(data)
            payload["vit"] = ViTConfig(**payload.get("vit", {}))
            payload["fusion"] = FusionConfig(**payload.get("fusion", {}))
            htsat = dict(payload.get("htsat", {}))
            for key in ("depths", "num_heads"):
                if key in htsat:
                    htsat[key] = tuple(htsat[key])
            payload["htsat"] = HTSATConfig(**htsat)
            payload["mel"] = MelConfig(**payload.get("mel", {}))
            payload["metadata"] = tuple(payload.get("metadata", ()))
            return cls(**payload)
        except TypeError as err:
            raise ConfigError(f"Sat2Sound config is invalid ({err}); re-import the model") from None

    to_json = ModelConfig.to_json
    with_updates = ModelConfig.with_updates

    # -- presets -------------------------------------------------------------------------------
    @classmethod
    def full(cls, family: str = "sentinel", metadata: Any = (), **kwargs: Any) -> Sat2SoundConfig:
        """The released architecture (ViT-B/16, 3 fusion layers, HTS-AT, 16,000 × 1024 codebook)."""
        return cls(family=family, metadata=metadata, **kwargs)

    @classmethod
    def tiny(cls, family: str = "sentinel", metadata: Any = (), **kwargs: Any) -> Sat2SoundConfig:
        """Same classes and data flow at toy widths, for tests. The token grids (14×14 image,
        32 audio) and the input shapes (224 px, 1001 × 64 mel) stay as released."""
        kwargs.setdefault("fc_dim", 32)
        kwargs.setdefault("codebook_size", 64)
        kwargs.setdefault("codebook_dim", 32)
        kwargs.setdefault("text_dim", 16)
        kwargs.setdefault("vit", ViTConfig(embed_dim=32, depth=2, num_heads=2))
        kwargs.setdefault("fusion", FusionConfig(num_layers=2, num_heads=8, dim_feedforward=64, meta_hidden=16))
        kwargs.setdefault("htsat", HTSATConfig(embed_dim=8, depths=(1, 2, 1, 2), num_heads=(1, 2, 2, 4), classes=5))
        return cls(family=family, metadata=metadata, **kwargs)


def is_sat2sound_payload(payload: dict[str, Any]) -> bool:
    """Whether a ``config.json`` payload describes a Sat2Sound model."""
    return payload.get("variant") == VARIANT
