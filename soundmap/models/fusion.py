"""Metadata fusion of PSM (psm-reference.md, "Metadata and fusion").

Tokens ``[CLS, image, audio source, caption source, lat/lon, month, hour]`` (only the model's
components) go through a 3-layer post-norm transformer (``nn.TransformerEncoderLayer`` defaults:
d 512, 8 heads, ff 2048, GELU, LayerNorm eps 1e-5); the output is the CLS position. A dropped
component's token is multiplied by 0 **and** excluded through the key-padding mask; CLS and image
are never masked.

The state-dict names are those of ``nn.TransformerEncoder`` / the authors' modules
(``cls_token``, ``transformer_encoder.layers.N.{self_attn.in_proj_weight, self_attn.in_proj_bias,
self_attn.out_proj, linear1, linear2, norm1, norm2}``, ``meta_embed.{audio_source_fc.source_embed,
caption_source_fc.source_embed, location_fc.fc1/fc2, month_fc.…, time_fc.…}``), but the math is
written here so two exact speed-ups (performance.md) are possible:

* a component dropped for every row is removed from the sequence instead of masked — a masked key
  receives no attention weight and its own output is never read, so the CLS output is unchanged;
* the last layer computes attention, output projection and feed-forward for the CLS row only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from soundmap.models.config import METADATA_COMPONENTS, FusionConfig
from soundmap.preprocess.metadata import AUDIO_SOURCES, CAPTION_SOURCES, MetaToken

#: LayerNorm epsilon of ``nn.TransformerEncoderLayer`` (PyTorch default).
FUSION_LN_EPS = 1e-5
#: Input width of each continuous metadata encoding.
META_INPUT_DIMS: dict[str, int] = {"latlon": 4, "month": 2, "hour": 2}
#: Attribute names of the token projections inside ``meta_embed`` (the authors' names).
META_MODULE_NAMES: dict[str, str] = {
    "audio_source": "audio_source_fc", "caption_source": "caption_source_fc",
    "latlon": "location_fc", "month": "month_fc", "hour": "time_fc",
}


class MetaMLP(nn.Module):
    """Continuous metadata → token: ``fc1`` (d→64) → GELU → ``fc2`` (64→512)."""

    def __init__(self, d_in: int, d_out: int, hidden: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SourceEmbedding(nn.Module):
    """Categorical source → token (``source_embed`` is an ``nn.Embedding``)."""

    def __init__(self, num_sources: int, d_out: int) -> None:
        super().__init__()
        self.source_embed = nn.Embedding(num_sources, d_out)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.source_embed(index)


class MetadataEmbed(nn.Module):
    """The token projections of the model's metadata components (only those it has)."""

    def __init__(self, components: tuple[str, ...], dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.components = components
        for component in components:
            if component == "audio_source":
                module: nn.Module = SourceEmbedding(len(AUDIO_SOURCES), dim)
            elif component == "caption_source":
                module = SourceEmbedding(len(CAPTION_SOURCES), dim)
            else:
                module = MetaMLP(META_INPUT_DIMS[component], dim, hidden)
            setattr(self, META_MODULE_NAMES[component], module)

    def token(self, component: str, meta: MetaToken) -> torch.Tensor:
        """Token of one component, zeroed on rows where it is dropped (N × dim)."""
        module = getattr(self, META_MODULE_NAMES[component])
        embedded = module(meta.values)
        return embedded * meta.valid.to(embedded.dtype).unsqueeze(1)


class SelfAttentionParams(nn.Module):
    """Parameters of ``nn.MultiheadAttention`` under its names (``in_proj_weight``/``bias``,
    ``out_proj``), initialised like it; the math lives in :class:`FusionLayer`."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)


class FusionLayer(nn.Module):
    """One post-norm encoder layer (= ``nn.TransformerEncoderLayer(batch_first, gelu)``)."""

    def __init__(self, dim: int, num_heads: int, dim_feedforward: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.self_attn = SelfAttentionParams(dim)
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.norm1 = nn.LayerNorm(dim, eps=FUSION_LN_EPS)
        self.norm2 = nn.LayerNorm(dim, eps=FUSION_LN_EPS)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        n, s, d = x.shape
        return x.reshape(n, s, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                cls_only: bool = False) -> torch.Tensor:
        """``x`` N × S × D; ``key_padding_mask`` N × S (True = ignore that key); with
        ``cls_only`` only row 0 is computed and N × 1 × D is returned."""
        dim = x.shape[-1]
        weight, bias = self.self_attn.in_proj_weight, self.self_attn.in_proj_bias
        queries_in = x[:, :1] if cls_only else x
        q = F.linear(queries_in, weight[:dim], bias[:dim])
        k, v = F.linear(x, weight[dim:], bias[dim:]).chunk(2, dim=-1)
        attn_mask = None if key_padding_mask is None else (~key_padding_mask)[:, None, None, :]
        p = self.dropout if self.training else 0.0
        attended = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v),
                                                  attn_mask=attn_mask, dropout_p=p)
        attended = attended.transpose(1, 2).reshape(queries_in.shape)
        h = self.norm1(queries_in + F.dropout(self.self_attn.out_proj(attended), p, self.training))
        ff = self.linear2(F.dropout(F.gelu(self.linear1(h)), p, self.training))
        return self.norm2(h + F.dropout(ff, p, self.training))


class _LayerStack(nn.Module):
    """Holds ``layers`` so the names read ``transformer_encoder.layers.N.…``."""

    def __init__(self, layers: list[FusionLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class MetadataFuser(nn.Module):
    """Image feature + metadata tokens → fused 512-d vector (the CLS output)."""

    def __init__(self, components: tuple[str, ...], dim: int, config: FusionConfig) -> None:
        super().__init__()
        if not components:
            raise ValueError("a metadata fuser needs at least one component")
        self.components = tuple(c for c in METADATA_COMPONENTS if c in components)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.transformer_encoder = _LayerStack(
            [FusionLayer(dim, config.num_heads, config.dim_feedforward) for _ in range(config.num_layers)])
        self.meta_embed = MetadataEmbed(self.components, dim, config.meta_hidden)

    def build_sequence(self, image_features: torch.Tensor, tokens: dict[str, MetaToken],
                       drop_absent: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token sequence (N × S × D) and key-padding mask (True = ignore) or None if nothing is masked.

        Components missing from ``tokens`` are dropped for every row: removed when
        ``drop_absent`` (fast path), otherwise kept as a zero token masked on every row (the
        reference's layout).
        """
        n = image_features.shape[0]
        device = image_features.device
        seq = [self.cls_token.expand(n, 1, -1).to(image_features.dtype), image_features.unsqueeze(1)]
        keep = [torch.ones(n, 2, dtype=torch.bool, device=device)]
        for component in self.components:
            meta = tokens.get(component)
            if meta is None:
                if drop_absent:
                    continue
                seq.append(torch.zeros_like(image_features).unsqueeze(1))
                keep.append(torch.zeros(n, 1, dtype=torch.bool, device=device))
                continue
            meta = MetaToken(meta.values.to(device), meta.valid.to(device))
            seq.append(self.meta_embed.token(component, meta).to(image_features.dtype).unsqueeze(1))
            keep.append(meta.valid.reshape(n, 1))
        keep_mask = torch.cat(keep, dim=1)
        padding = None if bool(keep_mask.all()) else ~keep_mask
        return torch.cat(seq, dim=1), padding

    def forward(self, image_features: torch.Tensor, tokens: dict[str, MetaToken],
                fast: bool = True) -> torch.Tensor:
        """Fused vector (N × D). ``fast`` (default) removes all-dropped tokens and computes only
        the CLS row in the last layer; ``fast=False`` runs the reference's full masked sequence."""
        x, padding = self.build_sequence(image_features, tokens, drop_absent=fast)
        layers = self.transformer_encoder.layers
        for i, layer in enumerate(layers):
            last = i == len(layers) - 1
            x = layer(x, padding, cls_only=fast and last)
        return x[:, 0]

