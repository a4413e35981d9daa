"""The training forward pass: a :class:`Batch` through a SoundscapeModel's towers, with gradients.

Kept apart from the loop so the loop does not know the model's module names. The image side
runs the backbone + projector on normalised pixels with per-sample resolution ``zoom × gsd``,
then the metadata fusion and heads (``SoundscapeModel.forward_image``, which keeps autograd —
``fuse``/``encode_*`` run under inference mode); audio and text go through their CLAP branches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models.embedding import Embedding
from .batch import Batch


@dataclass
class BatchEmbeddings:
    """Row-aligned embeddings of one batch (text None when the batch has no captions)."""

    image: Embedding
    audio: Embedding
    text: Embedding | None


def clap_branches(model: nn.Module) -> list[nn.Module]:
    """The audio and text CLAP branches (``--freeze-clap`` freezes their ``.model``, not the heads)."""
    return [m for m in (model.audio_encoder, model.text_encoder) if m is not None]


def embed_batch(model: nn.Module, batch: Batch) -> BatchEmbeddings:
    """Embeddings of every modality of ``batch`` (already on the model's device), differentiable."""
    n = len(batch)
    res = batch.zooms.to(batch.pixels.device, torch.float32) * float(model.config.gsd)
    tokens = batch.metadata.encode(n, model.config.metadata) if model.config.metadata else {}
    image = Embedding.from_raw(*model.forward_image(batch.pixels, res, tokens))
    audio = Embedding.from_raw(*model.audio_encoder(batch.input_features, batch.is_longer))
    text = None
    if batch.input_ids is not None:
        text = Embedding.from_raw(*model.text_encoder(batch.input_ids, batch.attention_mask))
    return BatchEmbeddings(image, audio, text)
