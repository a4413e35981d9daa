"""Import the authors' Sat2Sound Lightning checkpoints (``MVRL/sat2sound``, ``*.ckpt``).

Recognised by its own contents: ``hyper_parameters`` is a **plain dict** (Lightning saves
``dict(model.hparams)``) and the ``state_dict`` holds the shared codebook ``fdt.space_dict`` and
the ``satmae_backbone.`` tensors. The file is read with the same safe loader as PSM/GeoCLAP
(``torch.load(weights_only=True)``; a plain dict needs no allow-list). Only ``state_dict`` and a
few hyper-parameters are kept (``sat_type``, ``metadata_type``, ``fc_dim``, ``codebook_size``,
``codebook_dim``, ``dataset_type``, ``run_name``); ``meta_droprate`` is deliberately ignored (the
authors' own evaluation sets it to 0 — with the saved 0.5 their loader drops metadata at random).

Every tensor is checked by name and shape against a model built from the derived config (431
tensors with the five metadata components, 430 for SoundingEarth's four, 381 without); anything
missing, extra or mis-shaped is refused naming the keys. The module tree of
:class:`~soundmap.models.sat2sound.modeling.Sat2SoundModel` uses the authors' names, so no renaming
is needed.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from soundmap.errors import ModelError
from soundmap.families import get_family
from soundmap.models.checkpoint import _count
from soundmap.models.config import FusionConfig, ViTConfig
from soundmap.models.sat2sound.configuration import HTSATConfig, Sat2SoundConfig
from soundmap.models.sat2sound.modeling import Sat2SoundModel

AUDIO = "audio_encoder.model.audio_enc."
VIT = "satmae_backbone.backbone."
FUSER = "sat_encoder.meta_fuser."
#: Heads of the fusion layers (``nhead=8`` in the reference; not visible in tensor shapes).
FUSION_HEADS = 8
#: Hyper-parameters kept in ``config.source`` for provenance.
KEPT_HPARAMS = ("dataset_type", "sat_type", "metadata_type", "fc_dim", "codebook_size", "codebook_dim", "run_name")


def is_sat2sound_checkpoint(checkpoint: Any) -> bool:
    """A Lightning dict whose hyper-parameters are a plain dict and whose tensors include the
    Sat2Sound codebook and SatMAE branch."""
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("hyper_parameters"), dict):
        return False
    state = checkpoint.get("state_dict")
    return isinstance(state, dict) and "fdt.space_dict" in state and any(k.startswith("satmae_backbone.") for k in state)


def _shape(state: dict[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise ModelError(f"checkpoint is missing {key}; it is not a complete Sat2Sound checkpoint")
    return tuple(state[key].shape)


def infer_vit(state: dict[str, torch.Tensor]) -> ViTConfig:
    """ViT sizes from the backbone tensors (64-d heads at real widths, 16-d for toy widths)."""
    embed, _, patch, _ = _shape(state, VIT + "patch_embed.proj.weight")
    hidden = _shape(state, VIT + "blocks.0.mlp.fc1.weight")[0]
    heads = embed // 64 if embed >= 64 else max(1, embed // 16)
    return ViTConfig(embed_dim=embed, depth=_count(state, re.escape(VIT) + r"blocks\.(\d+)\."), num_heads=heads,
                     mlp_ratio=hidden / embed, patch_size=patch)


def infer_htsat(state: dict[str, torch.Tensor]) -> HTSATConfig:
    """HTS-AT sizes: widths from ``patch_embed``, depths by counting blocks, heads from the
    relative-position tables, window from the table size, classes from ``head``."""
    embed, _, patch, _ = _shape(state, AUDIO + "patch_embed.proj.weight")
    stages = _count(state, re.escape(AUDIO) + r"layers\.(\d+)\.")
    depths = tuple(_count(state, re.escape(AUDIO) + rf"layers\.{s}\.blocks\.(\d+)\.") for s in range(stages))
    table = AUDIO + "layers.{}.blocks.0.attn.relative_position_bias_table"
    heads = tuple(_shape(state, table.format(s))[1] for s in range(stages))
    window = int(round((_shape(state, table.format(0))[0] ** 0.5 + 1) / 2))
    hidden = _shape(state, AUDIO + "layers.0.blocks.0.mlp.fc1.weight")[0]
    return HTSATConfig(mel_bins=_shape(state, AUDIO + "bn0.weight")[0], patch_size=patch, embed_dim=embed,
                       depths=depths, num_heads=heads, window_size=window, mlp_ratio=hidden / embed,
                       classes=_shape(state, AUDIO + "head.weight")[0])


def infer_fusion(state: dict[str, torch.Tensor]) -> FusionConfig:
    layers = FUSER + "transformer_encoder.layers."
    hidden = next((tuple(v.shape)[0] for k, v in state.items()
                   if k.startswith(FUSER + "meta_embed.") and k.endswith("fc1.weight")), 64)
    return FusionConfig(num_layers=_count(state, re.escape(layers) + r"(\d+)\."), num_heads=FUSION_HEADS,
                        dim_feedforward=_shape(state, layers + "0.linear1.weight")[0], meta_hidden=hidden)


def config_from_checkpoint(checkpoint: dict[str, Any], name: str = "") -> Sat2SoundConfig:
    """The :class:`Sat2SoundConfig` of a loaded authors' checkpoint."""
    from soundmap.models.checkpoint import parse_metadata_type

    hparams = checkpoint["hyper_parameters"]
    state = checkpoint["state_dict"]
    family = hparams.get("sat_type")
    if family is None:
        raise ModelError("Sat2Sound checkpoint hyper_parameters have no sat_type (imagery family)")
    metadata = parse_metadata_type(hparams.get("metadata_type", "none"))
    codebook_size, codebook_dim = _shape(state, "fdt.space_dict")
    return Sat2SoundConfig(
        family=get_family(str(family)).name, metadata=metadata,
        fc_dim=_shape(state, "satmae_backbone.projector.linear2.weight")[0],
        codebook_size=codebook_size, codebook_dim=codebook_dim,
        text_dim=_shape(state, "fdt.txt_query_model.q_map.1.weight")[1],
        vit=infer_vit(state), fusion=infer_fusion(state) if metadata else Sat2SoundConfig.full().fusion,
        htsat=infer_htsat(state), name=name,
        source={key: (v if isinstance(v, (str, int, float, bool)) else str(v))
                for key in KEPT_HPARAMS if (v := hparams.get(key)) is not None},
    )


def convert_checkpoint(checkpoint: dict[str, Any], name: str = "") -> Sat2SoundModel:
    """A :class:`Sat2SoundModel` holding exactly the checkpoint's tensors (strict check, fp32)."""
    config = config_from_checkpoint(checkpoint, name)
    state = {key: (t.to(torch.float32) if t.is_floating_point() else t).contiguous()
             for key, t in checkpoint["state_dict"].items()}
    return Sat2SoundModel.from_state_dict(config, state, name=name, what="Sat2Sound checkpoint tensors")


def export_checkpoint(model: Sat2SoundModel, **hparam_overrides: Any) -> dict[str, Any]:
    """The model as the authors' Lightning checkpoint dict (plain-dict hyper-parameters)."""
    config = model.config
    from soundmap.models.config import AUTHOR_COMPONENT_NAMES

    hparams = {
        "sat_type": {"bing": "bingmap"}.get(config.family, config.family),
        "metadata_type": "_".join(AUTHOR_COMPONENT_NAMES[c] for c in ("latlon", "month", "hour", "audio_source",
                                                                      "caption_source") if c in config.metadata)
        or "none",
        "fc_dim": config.fc_dim, "codebook_size": config.codebook_size, "codebook_dim": config.codebook_dim,
        "meta_droprate": 0.5, "dataset_type": "SoundingEarth" if config.family == "googleEarth" else "GeoSound",
        "combined_modality_loss": 1, "batch_size": 128, "learning_rate": 5e-5,
    }
    hparams.update(hparam_overrides)
    return {"epoch": 3, "global_step": 1000, "pytorch-lightning_version": "2.2.0", "hparams_name": "hparams",
            "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "hyper_parameters": hparams}
