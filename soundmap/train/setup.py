"""Building the model a training run starts from, SatMAE initialisation, and the final export.

A run starts from an installed model (``--init NAME``: fine-tune an imported PSM/GeoCLAP
checkpoint, CLAP weights included) or from a fresh architecture (``variant``, imagery
``family``, metadata components; ``size="tiny"`` for tests). A fresh image backbone can be
initialised from a SatMAE pre-training checkpoint, as the authors did.

The export writes ``config.json`` + ``model.safetensors`` into the model cache with
``SoundscapeModel.save`` — the same format ``soundmap models import`` produces — so the trained
model is immediately usable by ``soundmap embed`` / ``query`` / ``evaluate`` by name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError, ModelError


def build_model(*, init: str | None = None, variant: str = "psm", family: str = "sentinel",
                metadata: Any = None, size: str = "full", name: str = "") -> nn.Module:
    """The starting model of a run (on CPU, in train mode)."""
    from ..models.config import METADATA_COMPONENTS, ModelConfig
    from ..models.soundscape import SoundscapeModel, load_model

    if init:
        model = load_model(init, device="cpu")
    else:
        components = METADATA_COMPONENTS if metadata is None else metadata
        if size not in ("full", "tiny"):
            raise InputError("--size must be full or tiny")
        maker = ModelConfig.full if size == "full" else ModelConfig.tiny
        model = SoundscapeModel(maker(variant=variant, family=family, metadata=components))
    if name:
        model.name = name
    return model.train()


_SKIP = re.compile(r"^(decoder|mask_token|pos_embed|cls_token|head|norm\.|fc_norm_)")


def satmae_key_map(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """SatMAE checkpoint key → our ``image_encoder.backbone.`` key (``patch_embed``, ``blocks``,
    ``fc_norm``). The MAE decoder, mask token, learned/fixed ``pos_embed`` (we use GSDPE),
    ``cls_token``, final ``norm`` and ``head`` are not used by the PSM encoder (global pooling)."""
    mapping = {}
    for key in state:
        clean = re.sub(r"^(module\.|model\.|encoder\.|backbone\.)+", "", key)
        if _SKIP.match(clean):
            continue
        if clean.startswith(("patch_embed.", "blocks.", "fc_norm.")):
            mapping[key] = f"image_encoder.backbone.{clean}"
    return mapping


def load_satmae(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Copy a SatMAE checkpoint's ViT weights into ``model``'s image backbone, checking shapes.

    Accepts ``.pth``/``.pt`` (a dict with ``model``/``state_dict`` or a bare state dict; loaded
    weights-only) and ``.safetensors``. Returns the backbone keys that stayed as initialised
    (normally ``fc_norm`` when starting from pre-training weights). A shape mismatch or a
    checkpoint with no ViT blocks is a :class:`ModelError`.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"SatMAE checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: Any = load_file(str(path))
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"cannot read SatMAE checkpoint {path}: {str(exc).splitlines()[0]}") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(raw, dict) and isinstance(raw.get(wrapper), dict):
            raw = raw[wrapper]
    if not isinstance(raw, dict):
        raise ModelError(f"{path} holds no state dict")
    mapping = satmae_key_map(raw)
    own = model.state_dict()
    if not any(".blocks." in v for v in mapping.values()):
        raise ModelError(f"{path} has no ViT blocks (patch_embed/blocks.N); is it a SatMAE checkpoint?")
    bad = [f"{k}: {tuple(raw[k].shape)} vs {tuple(own[v].shape)}" for k, v in mapping.items()
           if v not in own or tuple(raw[k].shape) != tuple(own[v].shape)]
    if bad:
        raise ModelError(f"SatMAE weights do not fit this image encoder ({len(bad)} keys, e.g. {bad[0]}); "
                         "the model needs a ViT-B/16 with 3 input channels")
    with torch.no_grad():
        for src, dst in mapping.items():
            own[dst].copy_(raw[src].to(own[dst].dtype))
    backbone = [k for k in own if k.startswith("image_encoder.backbone.")]
    return [k for k in backbone if k not in set(mapping.values())]


def export_model(model: nn.Module, name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Save ``model`` as installed model ``name`` (``<model_dir>/<name>``), ready for ``load_model``."""
    from ..paths import model_dir

    if not name or "/" in name or name.startswith("."):
        raise InputError(f"invalid model name {name!r}; use letters, digits, - and _")
    model.name = name
    was_training = model.training
    model.eval()
    try:
        return model.save(model_dir(cache_dir) / name)
    finally:
        model.train(was_training)
