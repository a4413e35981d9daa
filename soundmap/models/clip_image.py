"""CLIP ViT-L/14 (OpenAI) and RemoteCLIP ViT-L/14 image embeddings through transformers.

The cross-modal urban sensing study embeds street-level images with OpenAI's CLIP ViT-L/14 and
aerial images with RemoteCLIP ViT-L/14, both giving 768-d vectors (§4.2): the projected image
feature of the CLIP image tower (``CLIPVisionModelWithProjection.image_embeds``).

RemoteCLIP is published as an open_clip state dict (``RemoteCLIP-ViT-L-14.pt``). open_clip needs
torchvision, which does not import beside torch 2.13 here, so the weights are mapped onto
transformers' ``CLIPVisionModelWithProjection`` by :func:`remoteclip_to_transformers`, which names
every tensor it moves and refuses a state dict with a vision tensor it does not understand.
open_clip's ViT layout (``visual.`` prefix) against transformers' (``vision_model.`` prefix):

==========================================  ====================================================
open_clip                                   transformers
==========================================  ====================================================
``conv1.weight`` (bias-free)                ``embeddings.patch_embedding.weight``
``class_embedding``                         ``embeddings.class_embedding``
``positional_embedding``                    ``embeddings.position_embedding.weight``
``ln_pre``                                  ``pre_layrnorm``
``transformer.resblocks.i.ln_1`` / ``ln_2`` ``encoder.layers.i.layer_norm1`` / ``layer_norm2``
``….attn.in_proj_weight`` / ``_bias``       rows [0:w], [w:2w], [2w:3w] → ``q_proj``, ``k_proj``, ``v_proj``
``….attn.out_proj``                         ``….self_attn.out_proj``
``….mlp.c_fc`` / ``mlp.c_proj``             ``….mlp.fc1`` / ``mlp.fc2``
``ln_post``                                 ``post_layernorm``
``proj`` (width × embed)                    ``visual_projection.weight`` (embed × width: transposed)
==========================================  ====================================================

Both apply ``ln_post`` to the class token and then the projection, so the outputs agree. The
architecture is read off the tensors (width, patch, grid, layers, MLP and embedding sizes); the
head count is ``width / 64`` (open_clip's head width), 16 for ViT-L/14. The activation is GELU:
RemoteCLIP's published usage builds open_clip's ``ViT-L-14`` configuration, which does not use
OpenAI's QuickGELU. Images are preprocessed as open_clip does for that model: shortest side
resized (bicubic) to the input size, centre crop, OpenAI's mean/std.

torch/transformers are imported inside functions (heavy).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError

OPEN_CLIP_HEAD_WIDTH = 64
VISUAL = "visual."
_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_BLOCK_NAMES = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
                "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_TOP_NAMES = {"conv1.weight": "vision_model.embeddings.patch_embedding.weight",
              "class_embedding": "vision_model.embeddings.class_embedding",
              "positional_embedding": "vision_model.embeddings.position_embedding.weight",
              "ln_pre.weight": "vision_model.pre_layrnorm.weight", "ln_pre.bias": "vision_model.pre_layrnorm.bias",
              "ln_post.weight": "vision_model.post_layernorm.weight",
              "ln_post.bias": "vision_model.post_layernorm.bias"}


@dataclass
class KeyMapping:
    """The result of mapping an open_clip state dict: transformers tensors and where each came from."""

    config: dict[str, Any]
    tensors: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)      # transformers key -> open_clip key
    ignored: list[str] = field(default_factory=list)           # non-vision (text tower) keys


def open_clip_vision_config(state: Mapping[str, Any]) -> dict[str, Any]:
    """``CLIPVisionConfig`` arguments read off an open_clip ViT state dict's shapes."""
    try:
        conv = state[VISUAL + "conv1.weight"]
        positions = state[VISUAL + "positional_embedding"]
        proj = state[VISUAL + "proj"]
        fc = state[VISUAL + "transformer.resblocks.0.mlp.c_fc.weight"]
    except KeyError as err:
        raise ModelError(f"the checkpoint is not an open_clip ViT state dict (no {err.args[0]})") from None
    width, patch = int(conv.shape[0]), int(conv.shape[-1])
    grid = math.isqrt(int(positions.shape[0]) - 1)
    if grid * grid + 1 != int(positions.shape[0]):
        raise ModelError(f"open_clip positional embedding of {positions.shape[0]} rows is not a square grid + class")
    layers = 1 + max(int(m.group(1)) for key in state if key.startswith(VISUAL)
                     for m in [_BLOCK.match(key[len(VISUAL):])] if m)
    return {"hidden_size": width, "intermediate_size": int(fc.shape[0]), "num_hidden_layers": layers,
            "num_attention_heads": max(1, width // OPEN_CLIP_HEAD_WIDTH), "image_size": grid * patch,
            "patch_size": patch, "projection_dim": int(proj.shape[1]), "hidden_act": "gelu",
            "layer_norm_eps": 1e-5, "num_channels": int(conv.shape[1])}


def remoteclip_to_transformers(state: Mapping[str, Any]) -> KeyMapping:
    """Map an open_clip (RemoteCLIP) state dict onto ``CLIPVisionModelWithProjection`` keys.

    Every ``visual.*`` tensor is used exactly once (``in_proj`` split in three, ``proj``
    transposed); anything else under ``visual.`` is an error, other keys (the text tower) are
    listed in ``ignored``.
    """
    state = _unwrap(state)
    mapping = KeyMapping(config=open_clip_vision_config(state), tensors={})
    for key, tensor in state.items():
        if not key.startswith(VISUAL):
            mapping.ignored.append(key)
            continue
        name = key[len(VISUAL):]
        if name in _TOP_NAMES:
            _put(mapping, _TOP_NAMES[name], tensor, key)
        elif name == "proj":
            _put(mapping, "visual_projection.weight", tensor.t().contiguous(), key)
        elif (match := _BLOCK.match(name)) is not None:
            _map_block(mapping, int(match.group(1)), match.group(2), tensor, key)
        else:
            raise ModelError(f"open_clip key {key} has no counterpart in transformers' CLIP vision model "
                             "(an attention-pooling or non-ViT model?)")
    return mapping


def _map_block(mapping: KeyMapping, layer: int, rest: str, tensor: Any, key: str) -> None:
    prefix = f"vision_model.encoder.layers.{layer}."
    if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
        kind = "weight" if rest.endswith("weight") else "bias"
        for part, chunk in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
            _put(mapping, f"{prefix}self_attn.{part}.{kind}", chunk.contiguous(), key)
        return
    module, _, kind = rest.rpartition(".")
    if module not in _BLOCK_NAMES or kind not in ("weight", "bias"):
        raise ModelError(f"open_clip key {key} has no counterpart in transformers' CLIP vision model")
    _put(mapping, f"{prefix}{_BLOCK_NAMES[module]}.{kind}", tensor, key)


def _put(mapping: KeyMapping, target: str, tensor: Any, source: str) -> None:
    if target in mapping.tensors:
        raise ModelError(f"open_clip keys {mapping.sources[target]} and {source} both map to {target}")
    mapping.tensors[target] = tensor
    mapping.sources[target] = source


def _unwrap(state: Mapping[str, Any]) -> dict[str, Any]:
    """A bare state dict from a ``{"state_dict": ...}`` wrapper and ``module.`` prefixes."""
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def build_remoteclip(state: Mapping[str, Any]) -> Any:
    """A ``CLIPVisionModelWithProjection`` holding the mapped weights (strict: nothing missing)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    mapping = remoteclip_to_transformers(state)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**mapping.config))
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in mapping.tensors and not k.endswith("position_ids"))
    extra = sorted(k for k in mapping.tensors if k not in expected)
    wrong = sorted(k for k, t in mapping.tensors.items() if k in expected and tuple(t.shape) != tuple(expected[k].shape))
    if missing or extra or wrong:
        raise ModelError(f"RemoteCLIP weights do not fit the CLIP vision model (missing {missing[:3]}, "
                         f"unexpected {extra[:3]}, wrong shapes {wrong[:3]})")
    model.load_state_dict(mapping.tensors, strict=False)
    return model.eval()


class CLIPImageEncoder:
    """Projected CLIP image features (``image_embeds``) of RGB uint8 images."""

    def __init__(self, model: Any, processor: Any, name: str, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.processor = processor
        self.name = name
        self.device = device

    def embed(self, images: Sequence[np.ndarray], batch: int = 16) -> np.ndarray:
        import torch

        outs = []
        for start in range(0, len(images), batch):
            pixels = self.processor(images=[np.asarray(i, dtype=np.uint8) for i in images[start:start + batch]],
                                    return_tensors="pt")["pixel_values"]
            with torch.no_grad():
                embeds = self.model(pixel_values=pixels.to(self.device)).image_embeds
            outs.append(embeds.detach().cpu().numpy().astype(np.float64))
        return np.concatenate(outs)


def image_processor(directory: Path | None, image_size: int) -> Any:
    """CLIP's preprocessing: the snapshot's ``preprocessor_config.json`` when present, otherwise
    open_clip's for OpenAI-style ViTs (bicubic shortest side, centre crop, OpenAI mean/std)."""
    try:  # transformers ≥ 5 names the PIL-backed processor explicitly (no torchvision here)
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import CLIPImageProcessor as Processor

    if directory is not None and (directory / "preprocessor_config.json").is_file():
        return Processor.from_pretrained(str(directory), local_files_only=True)
    return Processor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def load_clip(device: str = "cpu", directory: str | os.PathLike | None = None) -> CLIPImageEncoder:
    """OpenAI CLIP ViT-L/14's image tower (``aux_models.yaml`` entry ``clip``)."""
    from transformers import CLIPVisionModelWithProjection

    from .auxiliary import fetch_aux

    folder = Path(directory) if directory is not None else fetch_aux("clip")
    try:
        model = CLIPVisionModelWithProjection.from_pretrained(str(folder), config=_vision_config(folder),
                                                              local_files_only=True)
    except (OSError, ValueError) as err:
        raise ModelError(f"CLIP files in {folder} are unreadable ({str(err).splitlines()[0]})") from None
    return CLIPImageEncoder(model, image_processor(folder, model.config.image_size), "clip", device)


def _vision_config(folder: Path) -> Any:
    """The vision tower's config of a whole-CLIP snapshot, with the *model's* projection size
    (a vision sub-config may not carry it and would default to 512)."""
    from transformers import AutoConfig, CLIPConfig

    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    if isinstance(config, CLIPConfig):
        vision = config.vision_config
        vision.projection_dim = config.projection_dim
        return vision
    return config


def load_remoteclip(device: str = "cpu", path: str | os.PathLike | None = None) -> CLIPImageEncoder:
    """RemoteCLIP ViT-L/14 (``aux_models.yaml`` entry ``remoteclip``), mapped onto transformers."""
    import torch

    from .auxiliary import fetch_aux

    file = Path(path) if path is not None else fetch_aux("remoteclip")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a bad file
        raise ModelError(f"RemoteCLIP checkpoint {file} is unreadable ({str(err).splitlines()[0]})") from None
    if not isinstance(state, Mapping):
        raise ModelError(f"RemoteCLIP checkpoint {file} is not a state dict")
    model = build_remoteclip(state)
    return CLIPImageEncoder(model, image_processor(None, model.config.image_size), "remoteclip", device)
