"""Model configuration: everything needed to rebuild a PSM / GeoCLAP model, stored as JSON next to
its weights (``config.json`` + ``model.safetensors``), the way transformers round-trips models.

Two variants exist (psm-reference.md, "Released checkpoints"):

* ``psm``      — PCME++ loss, probabilistic heads (μ, log σ²) on every modality, scored with CSD;
* ``geoclap``  — InfoNCE loss, deterministic (L2-normalised means only), scored with cosine.

``metadata`` lists the metadata components fused with the image, always kept in the reference's
token order (:data:`METADATA_COMPONENTS`); empty means the model has no fusion transformer.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from soundmap.errors import ConfigError, ModelError
from soundmap.families import Family, get_family

#: Metadata components in the reference's token order (after CLS and image).
METADATA_COMPONENTS: tuple[str, ...] = ("audio_source", "caption_source", "latlon", "month", "hour")
#: The authors' names of the components inside ``metadata_type`` (e.g. ``latlong_month_time_asource_tsource``).
AUTHOR_COMPONENT_NAMES: dict[str, str] = {
    "audio_source": "asource", "caption_source": "tsource", "latlon": "latlong", "month": "month", "hour": "time",
}
VARIANTS: tuple[str, ...] = ("psm", "geoclap")
#: Version of the image/metadata/audio/text preprocessing; bump it when a transform changes so that
#: cached embeddings made with another version are recognised as stale.
PREPROCESS_VERSION = "1"
CONFIG_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ViTConfig:
    """SatMAE ViT backbone (ViT-B/16 for the released checkpoints)."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    img_size: int = 224

    @property
    def grid_size(self) -> int:
        """Patches per side (14 for 224 px / 16 px)."""
        return self.img_size // self.patch_size


@dataclass(frozen=True)
class FusionConfig:
    """Metadata fusion transformer (``nn.TransformerEncoder`` defaults of the reference)."""

    num_layers: int = 3
    num_heads: int = 8
    dim_feedforward: int = 2048
    meta_hidden: int = 64


def normalize_components(components: Any) -> tuple[str, ...]:
    """Validate metadata component names and return them in the reference token order."""
    if components is None:
        return ()
    if isinstance(components, str):
        components = [c for c in components.replace(",", " ").split() if c]
    names = list(components)
    unknown = [c for c in names if c not in METADATA_COMPONENTS]
    if unknown:
        raise ConfigError(f"unknown metadata component(s) {unknown}; valid: {', '.join(METADATA_COMPONENTS)}")
    return tuple(c for c in METADATA_COMPONENTS if c in names)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model; JSON round-trips through :meth:`to_dict`/:meth:`from_dict`."""

    variant: str
    family: str
    metadata: tuple[str, ...] = ()
    fc_dim: int = 512
    vit: ViTConfig = field(default_factory=ViTConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    audio: dict[str, Any] = field(default_factory=dict)
    text: dict[str, Any] = field(default_factory=dict)
    preprocess_version: str = PREPROCESS_VERSION
    name: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    format_version: int = CONFIG_FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"unknown model variant {self.variant!r}; use one of: {', '.join(VARIANTS)}")
        object.__setattr__(self, "family", get_family(self.family).name)
        object.__setattr__(self, "metadata", normalize_components(self.metadata))

    # -- derived facts -------------------------------------------------------------------------
    @property
    def probabilistic(self) -> bool:
        """PSM models output (μ, log σ²); GeoCLAP models only μ."""
        return self.variant == "psm"

    @property
    def loss(self) -> str:
        """The training loss of the variant (the authors' ``loss_type``)."""
        return "pcmepp" if self.variant == "psm" else "infonce"

    @property
    def default_score(self) -> str:
        """CSD for probabilistic models, cosine for deterministic ones."""
        return "csd" if self.probabilistic else "cosine"

    @property
    def family_info(self) -> Family:
        return get_family(self.family)

    @property
    def gsd(self) -> float:
        """Native ground sample distance (m/px) of the imagery family the model was trained on."""
        return self.family_info.gsd

    @property
    def metadata_type(self) -> str:
        """The authors' spelling, e.g. ``asource_tsource_latlong_month_time`` or ``none``."""
        return "_".join(AUTHOR_COMPONENT_NAMES[c] for c in self.metadata) or "none"

    # -- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["metadata"] = list(self.metadata)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        try:
            payload = dict(data)
            payload["vit"] = ViTConfig(**payload.get("vit", {}))
            payload["fusion"] = FusionConfig(**payload.get("fusion", {}))
            payload["metadata"] = tuple(payload.get("metadata", ()))
            return cls(**payload)
        except TypeError as err:
            raise ConfigError(f"model config is invalid ({err}); re-import the model") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as err:
            raise ConfigError(f"model config is not valid JSON ({err}); re-import the model") from None

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    def with_updates(self, **changes: Any) -> ModelConfig:
        return replace(self, **changes)

    # -- presets -------------------------------------------------------------------------------
    @classmethod
    def full(cls, variant: str = "psm", family: str = "sentinel", metadata: Any = METADATA_COMPONENTS,
             **kwargs: Any) -> ModelConfig:
        """The released architecture: ViT-B/16, 3-layer fusion, full CLAP (``laion/clap-htsat-fused``)."""
        from soundmap.models.clap import full_audio_config, full_text_config

        kwargs.setdefault("audio", full_audio_config())
        kwargs.setdefault("text", full_text_config())
        return cls(variant=variant, family=family, metadata=metadata, **kwargs)

    @classmethod
    def tiny(cls, variant: str = "psm", family: str = "sentinel", metadata: Any = METADATA_COMPONENTS,
             **kwargs: Any) -> ModelConfig:
        """Same classes and data flow at toy sizes, for tests (fc_dim stays 512: CLAP projects to 512)."""
        from soundmap.models.clap import tiny_audio_config, tiny_text_config

        kwargs.setdefault("vit", ViTConfig(embed_dim=32, depth=2, num_heads=2))
        kwargs.setdefault("fusion", FusionConfig(num_layers=2, num_heads=8, dim_feedforward=64, meta_hidden=64))
        kwargs.setdefault("audio", tiny_audio_config())
        kwargs.setdefault("text", tiny_text_config())
        return cls(variant=variant, family=family, metadata=metadata, **kwargs)


#: The two files of an installed model directory.
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def read_config(directory: str | os.PathLike) -> tuple[ModelConfig, str]:
    """The :class:`ModelConfig` and recorded weights SHA-256 of a model directory.

    Here, beside the config and away from the torch modules, so that listing installed models
    (``soundmap models list``) reads configs without importing torch."""
    path = Path(directory) / CONFIG_FILE
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelError(f"cannot read {path} ({err}); re-import the model") from None
    try:
        sha = str(payload.pop("weights_sha256", ""))
        if payload.get("variant") == "sat2sound":  # the third family has its own config class (no torch)
            from soundmap.models.sat2sound.configuration import Sat2SoundConfig

            return Sat2SoundConfig.from_dict(payload), sha  # type: ignore[return-value]
        return ModelConfig.from_dict(payload), sha
    except (AttributeError, KeyError, TypeError, ValueError) as err:  # a value of the wrong type
        raise ModelError(f"{path} has a field of the wrong type or shape ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); re-import the model") from None
