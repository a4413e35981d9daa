"""The assembled Sat2Sound model with the same public API as PSM/GeoCLAP's ``SoundscapeModel``.

Module tree = the authors' Lightning state-dict names, so a checkpoint loads by name:

* ``satmae_backbone.backbone`` — SatMAE ViT-B/16 with the GSD positional embedding (shared with
  PSM), **no final norm, no pooling**: all 196 patch tokens are returned;
* ``satmae_backbone.projector`` — ``linear1`` 768→1024, exact GELU, ``linear2``, per token;
* ``sat_encoder.meta_fuser`` — (models with metadata) 3 post-norm encoder layers over
  [196 image tokens, M metadata tokens]; **all 196 + M outputs** go to the codebook;
* ``audio_encoder.model.audio_enc`` — HTS-AT (:mod:`.htsat`), 32 fine-grained tokens of 768;
* ``fdt`` — the shared codebook and the three query models (:mod:`.codebook`);
* ``logit_scale_*`` — training-only temperatures, kept so checkpoints round-trip.

What soundmap caches per cell (:meth:`Sat2SoundModel.encode_image`, width :attr:`feature_dim`):
models without metadata store the final 1024-d embedding (nothing is left to fuse); models with
metadata store the 196 projected tokens flattened (196 × 1024), because metadata is fused per
token — :meth:`fuse` then runs the fuser and the codebook (see bench/RESULTS.md for the cost).

Embeddings: the pooled vector is not normalised by the model; scores are cosine. The family's
combination rule for a composed query is ``l2n(l2n(audio) + l2n(text))``; so that the shared
:meth:`Embedding.combine` (which adds ``raw_mu``) applies it unchanged, a Sat2Sound
:class:`Embedding` carries the unit vector as its ``raw_mu``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from soundmap.errors import InputError, ModelError
from soundmap.models.embedding import Embedding, l2_normalize
from soundmap.models.fusion import FusionLayer, MetadataEmbed, _LayerStack
from soundmap.models.heads import MLPHead
from soundmap.models.sat2sound.codebook import Codebook
from soundmap.models.sat2sound.configuration import Sat2SoundConfig
from soundmap.models.sat2sound.htsat import HTSAT
from soundmap.models.soundscape import SoundscapeModel
from soundmap.models.vit import ViTBackbone
from soundmap.preprocess.metadata import Metadata, MetaToken

#: Training-only temperatures of the six contrastive losses (``combined_modality_loss=1``).
LOGIT_SCALES: tuple[str, ...] = ("at", "it", "ia", "fdt", "i_at", "it_a")
#: Rows per fusion chunk (each row is 196 + M tokens × 1024 through 3 layers).
FUSE_CHUNK = 64


class TokenViT(ViTBackbone):
    """The SatMAE ViT as Sat2Sound uses it: patch embedding + GSD positional embedding + blocks,
    returning every patch token (N × 196 × 768). The final ``norm`` was deleted by the authors,
    so the shared backbone's ``fc_norm`` is removed here too."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        del self.fc_norm

    def forward(self, pixels: torch.Tensor, res: torch.Tensor) -> torch.Tensor:
        return self.tokens(pixels, res)


class SatMAEBranch(nn.Module):
    """``backbone`` + per-token ``projector`` → (N × 196 × fc_dim)."""

    def __init__(self, config: Sat2SoundConfig) -> None:
        super().__init__()
        self.backbone = TokenViT(config.vit)
        self.projector = MLPHead(config.vit.embed_dim, config.fc_dim)

    def forward(self, pixels: torch.Tensor, res: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(pixels, res))


class TokenMetaFuser(nn.Module):
    """Per-token metadata fusion: [image tokens, metadata tokens] through post-norm layers, all
    outputs kept. Metadata tokens are ordered asource, tsource, latlong, month, time (only the
    model's); an invalid or absent one is a zero token excluded through the key-padding mask.

    Inference quirk reproduced (PyTorch's nested-tensor fast path, which the released models were
    evaluated with): when in *every* row of the batch the masked tokens are all trailing, the
    output rows of the masked tokens are exactly 0; otherwise they are ordinary attention outputs.
    Either way they are pooled by the codebook afterwards.
    """

    def __init__(self, config: Sat2SoundConfig) -> None:
        super().__init__()
        if not config.metadata:
            raise ValueError("a metadata fuser needs at least one component")
        self.components = config.metadata
        fusion = config.fusion
        self.transformer_encoder = _LayerStack(
            [FusionLayer(config.fc_dim, fusion.num_heads, fusion.dim_feedforward) for _ in range(fusion.num_layers)])
        self.meta_embed = MetadataEmbed(self.components, config.fc_dim, fusion.meta_hidden)

    def meta_tokens(self, tokens: dict[str, MetaToken], n: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N × M × D) metadata tokens (zeroed where invalid) and their validity (N × M)."""
        seq, valid = [], []
        for component in self.components:
            meta = tokens.get(component)
            if meta is None:
                seq.append(torch.zeros(n, like.shape[-1], dtype=like.dtype, device=like.device))
                valid.append(torch.zeros(n, dtype=torch.bool, device=like.device))
                continue
            meta = MetaToken(meta.values.to(like.device), meta.valid.to(like.device))
            seq.append(self.meta_embed.token(component, meta).to(like.dtype))
            valid.append(meta.valid.reshape(n))
        return torch.stack(seq, dim=1), torch.stack(valid, dim=1)

    def forward(self, image_tokens: torch.Tensor, tokens: dict[str, MetaToken]) -> torch.Tensor:
        n = image_tokens.shape[0]
        meta, meta_valid = self.meta_tokens(tokens, n, image_tokens)
        x = torch.cat([image_tokens, meta], dim=1)
        keep = torch.cat([torch.ones(n, image_tokens.shape[1], dtype=torch.bool, device=x.device), meta_valid], 1)
        padding = None if bool(keep.all()) else ~keep
        for layer in self.transformer_encoder.layers:
            x = layer(x, padding)
        if padding is not None and not self.training and masks_are_trailing(keep):
            x = x * keep.unsqueeze(-1).to(x.dtype)
        return x


def masks_are_trailing(keep: torch.Tensor) -> bool:
    """Whether every row's kept tokens form a prefix (the masked ones are all at the end)."""
    as_int = keep.to(torch.int8)
    return bool((as_int[:, 1:] <= as_int[:, :-1]).all())


class _SatEncoder(nn.Module):
    def __init__(self, config: Sat2SoundConfig) -> None:
        super().__init__()
        self.meta_fuser = TokenMetaFuser(config)


class _AudioModel(nn.Module):
    def __init__(self, config: Sat2SoundConfig) -> None:
        super().__init__()
        self.audio_enc = HTSAT(config.htsat, config.mel)


class _AudioEncoder(nn.Module):
    def __init__(self, config: Sat2SoundConfig) -> None:
        super().__init__()
        self.model = _AudioModel(config)


def unit_embedding(raw: torch.Tensor) -> Embedding:
    """A Sat2Sound :class:`Embedding`: unit ``mu`` and ``raw_mu`` (see the module docstring)."""
    unit = l2_normalize(raw.float())
    return Embedding(mu=unit, logvar=None, raw_mu=unit)


class Sat2SoundModel(nn.Module):
    """Sat2Sound built from a :class:`Sat2SoundConfig`; API of :class:`SoundscapeModel`."""

    def __init__(self, config: Sat2SoundConfig, *, name: str = "", weights_sha256: str = "") -> None:
        super().__init__()
        self.config = config
        self.name = name or config.name
        self.weights_sha256 = weights_sha256
        self.satmae_backbone = SatMAEBranch(config)
        if config.metadata:
            self.sat_encoder = _SatEncoder(config)
        self.audio_encoder = _AudioEncoder(config)
        self.fdt = Codebook(config.codebook_size, config.codebook_dim, config.fc_dim, config.text_dim,
                            config.htsat.out_dim)
        for scale in LOGIT_SCALES:
            setattr(self, f"logit_scale_{scale}", nn.Parameter(torch.tensor(float(np.log(1 / 0.07)))))
        self.text_encoder_dir: Path | None = None
        self.cache_dir: Path | None = None
        self._text: dict[str, Any] = {}
        self.precision = "auto"
        self.eval()

    # -- shared with PSM/GeoCLAP: the same semantics, one implementation --------------------------
    #: ``auto`` | ``fp32`` for the ViT; what it means on the current device; the autocast context.
    set_precision = SoundscapeModel.set_precision
    image_precision = SoundscapeModel.image_precision
    _image_autocast = SoundscapeModel._image_autocast
    #: Per-image ``zoom × gsd`` for the GSD positional embedding.
    resolutions = SoundscapeModel.resolutions
    #: ``config.json`` + ``model.safetensors`` written atomically, weights hashed.
    save = SoundscapeModel.save
    #: A model holding exactly a state dict (strict name/shape check, tensors assigned, no init).
    from_state_dict = classmethod(SoundscapeModel.from_state_dict.__func__)  # type: ignore[attr-defined]

    # -- facts ------------------------------------------------------------------------------------
    variant = "sat2sound"
    probabilistic = False
    default_score = "cosine"

    family = SoundscapeModel.family
    preprocess_version = SoundscapeModel.preprocess_version
    metadata_components = SoundscapeModel.metadata_components
    device = SoundscapeModel.device

    @property
    def feature_dim(self) -> int:
        """Width of what :meth:`encode_image` returns per cell (and the store keeps)."""
        if self.config.metadata:
            return self.config.num_patches * self.config.fc_dim
        return self.config.codebook_dim

    @property
    def fuser(self) -> TokenMetaFuser | None:
        return self.sat_encoder.meta_fuser if self.config.metadata else None

    # -- image ------------------------------------------------------------------------------------
    @property
    def image_encoder(self) -> SatMAEBranch:
        """The image branch under the name :meth:`SoundscapeModel.encode_image` calls."""
        return self.satmae_backbone

    #: uint8 N×H×W×3 renders → projected patch tokens (N × 196 × fc_dim, fp32): PSM's eval
    #: transform and batching, which are the authors' here too (the render already covers
    #: ``zoom × tile`` px of ground; resized to 224, bicubic + antialias; ImageNet normalisation).
    image_tokens = SoundscapeModel.encode_image

    def features_from_pixels(self, pixels: torch.Tensor, res: torch.Tensor) -> torch.Tensor:
        """Normalised 224-px pixels (N × 3 × 224 × 224) + ``zoom × gsd`` → what
        :meth:`encode_image` returns (for inputs already transformed, e.g. the evaluation)."""
        with torch.inference_mode():
            with self._image_autocast():
                tokens = self.satmae_backbone(pixels.to(self.device), res.to(self.device)).float()
            if self.config.metadata:
                return tokens.reshape(tokens.shape[0], -1)
            return self.fdt.embed(self.fdt.img_query_model, tokens)

    def encode_image(self, images: Any, zoom: Any, batch_size: int = 32) -> torch.Tensor:
        """Per-cell features to cache (N × :attr:`feature_dim`): the final unnormalised embedding
        without metadata, the flattened projected tokens with metadata."""
        tokens = self.image_tokens(images, zoom, batch_size)
        if self.config.metadata:
            return tokens.reshape(tokens.shape[0], -1)
        with torch.inference_mode():
            return self.fdt.embed(self.fdt.img_query_model, tokens)

    def fused_tokens(self, features: torch.Tensor, metadata: Metadata | None) -> torch.Tensor:
        """Cached features → the tokens the codebook pools (N × (196 + M) × D)."""
        n = features.shape[0]
        tokens = features.to(self.device, torch.float32).reshape(n, self.config.num_patches, self.config.fc_dim)
        encoded = (metadata or Metadata()).encode(n, self.config.metadata)
        return self.sat_encoder.meta_fuser(tokens, encoded)

    def fuse(self, image_features: torch.Tensor, metadata: Metadata | None = None,
             chunk: int = FUSE_CHUNK) -> Embedding:
        """Cached features + metadata → image :class:`Embedding` (``logvar`` None). Without
        metadata components the features are already the embedding and metadata is ignored."""
        features = torch.as_tensor(image_features).to(self.device, torch.float32)
        if not self.config.metadata:
            return unit_embedding(features)
        metadata = metadata or Metadata()
        n = features.shape[0]
        if (length := metadata.length()) is not None and length != n:
            raise InputError(f"metadata has {length} values per field but there are {n} cells")
        parts = []
        with torch.inference_mode():
            for start in range(0, n, chunk):
                part = _metadata_rows(metadata, start, min(start + chunk, n))
                fused = self.fused_tokens(features[start:start + chunk], part)
                parts.append(self.fdt.embed(self.fdt.img_query_model, fused))
        return unit_embedding(torch.cat(parts) if parts else features.new_zeros((0, self.config.codebook_dim)))

    def token_scores(self, image_features: torch.Tensor, metadata: Metadata | None, queries: Embedding,
                     chunk: int = 8) -> torch.Tensor:
        """Sub-cell maps: for each cell and query, the cosine between the query and each of the
        cell's 196 (metadata-fused) image tokens → (N × Q × 14 × 14), token (r, c) = patch row r
        (top = north), column c.

        Each token is pooled through the codebook on its own (the max over one token is its own
        scores; sparsemax over the codes; ``w @ C``), so a token scores exactly as a cell would if
        that token were the whole image, in the same cosine units as the cell map. (The authors'
        demo "word heatmap" instead shows, for one word, the image tokens' raw scores on that
        word's strongest code; a query here may be a sentence, a clip or both, so its whole
        embedding is used.) Models without metadata keep only the cell embedding: refused.
        """
        from soundmap.models.sat2sound.codebook import CODEBOOK_TEMPERATURE, sparsemax

        if not self.config.metadata:
            raise ModelError("sub-cell maps need the image tokens, which only Sat2Sound models with metadata "
                             "store; use a *-meta model")
        features = torch.as_tensor(image_features).to(self.device, torch.float32)
        n, g, patches = features.shape[0], self.config.vit.grid_size, self.config.num_patches
        metadata = metadata or Metadata()
        query = queries.mu.to(self.device, torch.float32)
        out = []
        with torch.inference_mode():
            for start in range(0, n, chunk):
                part = _metadata_rows(metadata, start, min(start + chunk, n))
                tokens = self.fused_tokens(features[start:start + chunk], part)[:, :patches]
                scores = self.fdt.token_scores(self.fdt.img_query_model, tokens) / CODEBOOK_TEMPERATURE
                emb = l2_normalize(sparsemax(scores, dim=-1) @ self.fdt.space_dict)
                out.append((emb @ query.T).permute(0, 2, 1))
        sims = torch.cat(out) if out else features.new_zeros((0, query.shape[0], patches))
        return sims.reshape(n, query.shape[0], g, g)

    # -- text / audio ----------------------------------------------------------------------------
    def text_encoder(self) -> tuple[Any, Any]:
        """(tokenizer, T5 encoder), loaded on first use (see :mod:`.preprocessing`)."""
        if "encoder" not in self._text:
            from soundmap.models.sat2sound.preprocessing import load_text_encoder

            tokenizer, encoder = load_text_encoder(self.config.t5_repo, self.text_encoder_dir, self.cache_dir)
            width = int(encoder.config.d_model)
            if width != self.config.text_dim:
                raise ModelError(f"the text encoder is {width} wide but this model needs {self.config.text_dim} "
                                 f"({self.config.t5_repo}); give a matching T5 encoder")
            self._text.update(tokenizer=tokenizer, encoder=encoder)
        return self._text["tokenizer"], self._text["encoder"].to(self.device)  # follows model.to(...)

    def encode_text(self, texts: str | Sequence[str] | None = None, *, input_ids: torch.Tensor | None = None,
                    attention_mask: torch.Tensor | None = None, batch_size: int = 32) -> Embedding:
        """Texts (or FlanT5 ``input_ids``/``attention_mask``) → text :class:`Embedding`: T5
        hidden states → ``txt_query_model`` → codebook pooling with pads scoring 0.

        Texts are encoded one by one, so that a text's embedding does not depend on the other
        texts of the call: in the reference's batches the pad tokens score 0 for every code and
        join the max pooling, which changes an embedding whenever the sparsemax threshold is
        negative. Pre-tokenized ``input_ids``/``attention_mask`` are used as given (a padded
        batch reproduces the authors' batched evaluation exactly)."""
        tokenizer, encoder = self.text_encoder()
        if input_ids is None:
            if texts is None:
                raise InputError("encode_text needs texts or input_ids")
            from soundmap.models.sat2sound.preprocessing import tokenize

            tokenize(tokenizer, texts)  # validates the input
            batch = [texts] if isinstance(texts, str) else list(texts)
            return Embedding.cat([self.encode_text(input_ids=row["input_ids"], attention_mask=row["attention_mask"])
                                  for row in (tokenize(tokenizer, text) for text in batch)])
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = []
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=False):
            for start in range(0, input_ids.shape[0], batch_size):
                ids = input_ids[start:start + batch_size].to(self.device)
                mask = attention_mask[start:start + batch_size].to(self.device)
                hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state.float()
                out.append(self.text_from_hidden(hidden, mask == 1))
        return unit_embedding(torch.cat(out))

    def text_from_hidden(self, hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """T5 hidden states (B × T × text_dim) + validity → unnormalised embedding (B × D)."""
        return self.fdt.embed(self.fdt.txt_query_model, hidden, valid)

    def encode_audio(self, paths_or_waveforms: Any = None, sample_rate: int | None = None, *,
                     input_features: torch.Tensor | None = None, batch_size: int = 8, **_: Any) -> Embedding:
        """Audio files / waveforms (or log-mel ``input_features`` N × 1001 × 64, or N × 1 × 1001 × 64)
        → audio :class:`Embedding`. ``is_longer`` (a CLAP input) is accepted and ignored."""
        enc = self.audio_encoder.model.audio_enc
        if input_features is None:
            if paths_or_waveforms is None:
                raise InputError("encode_audio needs audio paths/waveforms or input_features")
            from soundmap.models.sat2sound.preprocessing import clip_waveforms

            waves = clip_waveforms(paths_or_waveforms, sample_rate, self.config.mel)
            with torch.inference_mode():
                input_features = torch.cat([enc.audio_feats_extractor(waves[i:i + batch_size].to(self.device))
                                            for i in range(0, waves.shape[0], batch_size)])
        mel = input_features if input_features.ndim == 4 else input_features[:, None]
        if mel.shape[-1] != self.config.mel.n_mels:
            raise InputError(f"input_features must be log-mel N×T×{self.config.mel.n_mels}, got {tuple(input_features.shape)}")
        out = []
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=False):
            for start in range(0, mel.shape[0], batch_size):
                tokens = enc(mel[start:start + batch_size].to(self.device, torch.float32))
                out.append(self.fdt.embed(self.fdt.audio_query_model, tokens))
        return unit_embedding(torch.cat(out))

def _metadata_rows(metadata: Metadata, start: int, stop: int) -> Metadata:
    """The rows ``start:stop`` of per-row metadata fields (scalars are shared)."""
    from dataclasses import fields, replace

    from soundmap.preprocess.metadata import _sequence_length

    changes = {}
    for field in fields(metadata):
        value = getattr(metadata, field.name)
        if _sequence_length(value) is not None:
            changes[field.name] = value[start:stop] if not isinstance(value, np.ndarray) else value.reshape(-1)[start:stop]
    return replace(metadata, **changes) if changes else metadata
