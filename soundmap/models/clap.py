"""CLAP audio and text branches of PSM / GeoCLAP (psm-reference.md, "Audio and text encoders").

The authors wrap Hugging Face's ``laion/clap-htsat-fused`` towers in a small module whose
attribute ``model`` holds the HF ``Clap{Audio,Text}ModelWithProjection``, and put that wrapper at
attribute ``model`` of the encoder. The branches below keep exactly that nesting so a released
checkpoint's ``audio_encoder.model.model.audio_model.…`` / ``text_encoder.model.model.text_model.…``
keys load by name once the ``audio_encoder.`` / ``text_encoder.`` prefix is stripped:

    model.model.audio_model.…        (266 tensors, full size)   model.model.audio_projection.… (4)
    model.model.text_model.…         (201 tensors, full size)   model.model.text_projection.…  (4)
    mean_head.linear{1,2}.{weight,bias} and std_head.… (probabilistic)  or  head.… (deterministic)

Tensor counts with transformers 5.23 equal the authors' checkpoints (checked in the tests):
the 201 text tensors include the two *persistent* buffers ``embeddings.position_ids`` and
``embeddings.token_type_ids`` (HF's CLAP text embeddings register them with ``persistent=True``,
unlike RoBERTa's), and the 266 audio tensors include 12 ``relative_position_index`` buffers and
the 4 × 3 BatchNorm statistics of the fusion block (plus ``audio_encoder.batch_norm``'s 3).
Nothing is added or dropped, so the importer sees neither extra nor missing keys.

The branches never build weights from the hub: the full configurations below reproduce the
fused checkpoint's architecture in code and the weights come from the imported PSM checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import (
    ClapAudioConfig,
    ClapAudioModelWithProjection,
    ClapTextConfig,
    ClapTextModelWithProjection,
)

from soundmap.models.heads import MLPHead, init_std_head_biases


def full_audio_config() -> dict[str, Any]:
    """HTSAT of ``laion/clap-htsat-fused`` as HF config kwargs.

    HF's ``ClapAudioConfig`` defaults describe this architecture *except* ``enable_fusion``,
    which defaults to False there; the fused checkpoint needs it True (4-channel input: the whole
    clip shrunk + 3 chunks, attentional feature fusion block ``patch_embed.fusion_model`` and
    ``patch_embed.mel_conv2d``). ``fusion_type`` stays None (= "aff_2d" in the LAION code; only
    "channel_map" would change the tensors).
    """
    return {
        "enable_fusion": True,
        "fusion_type": None,
        "spec_size": 256,
        "num_mel_bins": 64,
        "window_size": 8,
        "patch_size": 4,
        "patch_stride": [4, 4],
        "patch_embed_input_channels": 1,
        "patch_embeds_hidden_size": 96,
        "depths": [2, 2, 6, 2],
        "num_attention_heads": [4, 8, 16, 32],
        "hidden_size": 768,
        "projection_dim": 512,
        "projection_hidden_act": "relu",
        "mlp_ratio": 4.0,
        "aff_block_r": 4,
        "num_classes": 527,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "qkv_bias": True,
        "flatten_patch_embeds": True,
        "enable_patch_layer_norm": True,
    }


def tiny_audio_config() -> dict[str, Any]:
    """A few-layer HTSAT with the same classes and fusion enabled, for tests (fast on CPU).

    It still takes the real featurizer's input (B × 4 × 1001 × 64): ``num_mel_bins`` 64 and
    ``spec_size`` 256 fix how the mel is folded into a 256 × 256 image. The patch stride of 16
    and the two stages of width 16/32 keep it small; ``hidden_size`` must equal the last stage's
    width (16 · 2^(stages−1)) because the projection reads the pooled last stage.
    """
    config = full_audio_config()
    config.update(
        {
            "patch_size": 16,
            "patch_stride": [16, 16],
            "window_size": 4,
            "patch_embeds_hidden_size": 16,
            "depths": [1, 1],
            "num_attention_heads": [1, 2],
            "hidden_size": 32,
            "projection_dim": 512,
        }
    )
    return config


def full_text_config() -> dict[str, Any]:
    """RoBERTa-base text tower of ``laion/clap-htsat-fused`` as HF config kwargs (= HF defaults)."""
    return {
        "vocab_size": 50265,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "hidden_act": "gelu",
        "max_position_embeddings": 514,
        "type_vocab_size": 1,
        "layer_norm_eps": 1e-12,
        "projection_dim": 512,
        "projection_hidden_act": "relu",
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
    }


def tiny_text_config() -> dict[str, Any]:
    """Two small layers, for tests. ``vocab_size`` 512 covers the test fixture's BPE vocabulary
    (tests/fixtures/clap_files.py); ``max_position_embeddings`` 130 is the least that fits 128
    tokens, because RoBERTa positions start after the padding index (1 + 128 + 1)."""
    config = full_text_config()
    config.update(
        {
            "vocab_size": 512,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 130,
        }
    )
    return config


class _HFHolder(nn.Module):
    """The authors' thin wrapper: only here so that the HF model sits at ``model.model``."""

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        self.model = hf_model


class _ClapBranch(nn.Module):
    """HF CLAP tower + PSM/GeoCLAP heads on its 512-d projection."""

    def __init__(self, hf_model: nn.Module, probabilistic: bool, dim: int) -> None:
        super().__init__()
        self.model = _HFHolder(hf_model)
        self.probabilistic = probabilistic
        if probabilistic:
            self.mean_head = MLPHead(dim, dim)
            self.std_head = MLPHead(dim, dim)
            init_std_head_biases(self.std_head)  # both biases −4, as the reference
        else:
            self.head = MLPHead(dim, dim)

    def _apply_heads(self, embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the *unnormalised* mean (the caller L2-normalises; "text added to the query"
        needs the raw one) and log σ² (``std_head`` outputs a log-variance despite its name)."""
        if self.probabilistic:
            return self.mean_head(embeds), self.std_head(embeds)
        return self.head(embeds), None


class ClapAudioBranch(_ClapBranch):
    """Audio tower: ``ClapAudioModelWithProjection`` → ``audio_embeds`` (B × 512) → heads."""

    def __init__(self, audio_config: dict[str, Any], probabilistic: bool, dim: int = 512) -> None:
        config = ClapAudioConfig(**audio_config)
        if not config.enable_fusion:
            raise ValueError("CLAP audio config must have enable_fusion=True (fused checkpoint)")
        super().__init__(ClapAudioModelWithProjection(config), probabilistic, dim)

    def forward(
        self, input_features: torch.Tensor, is_longer: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``input_features`` B × 4 × 1001 × 64, ``is_longer`` B (bool) → (raw μ, log σ² | None).

        ``audio_embeds`` is read from the WithProjection output explicitly: in transformers 5.x
        ``ClapModel.get_audio_features`` returns an output object, not a tensor.
        """
        is_longer = is_longer.reshape(-1, 1).to(torch.bool)
        output = self.model.model(input_features=input_features, is_longer=is_longer)
        return self._apply_heads(output.audio_embeds)


class ClapTextBranch(_ClapBranch):
    """Text tower: ``ClapTextModelWithProjection`` → ``text_embeds`` (B × 512) → heads."""

    def __init__(self, text_config: dict[str, Any], probabilistic: bool, dim: int = 512) -> None:
        super().__init__(ClapTextModelWithProjection(ClapTextConfig(**text_config)), probabilistic, dim)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``input_ids``/``attention_mask`` B × 128 (long) → (raw μ, log σ² | None)."""
        output = self.model.model(input_ids=input_ids, attention_mask=attention_mask)
        return self._apply_heads(output.text_embeds)
