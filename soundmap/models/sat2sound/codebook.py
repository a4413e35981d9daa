"""Sat2Sound's shared codebook of "soundscape concepts" (the authors' FDT module).

Every modality's tokens become one embedding the same way (``Query_model`` of the reference):

1. ``q = q_map(tokens)`` — LayerNorm → Linear(d_in→D) → GELU → LayerNorm(D) → Linear(D→D)
   (``nn.Sequential`` indices 0, 1, 3, 4; index 2 is the GELU);
2. ``s = q · Cᵀ / √D`` against the codebook ``C`` (K × D): a plain dot product, neither side
   normalised;
3. text only: ``s · m`` with m = 1 on real tokens and 0 on padding — pad tokens then score 0 for
   every code **and still take part in the max** (it matters only when the sparsemax threshold
   is negative);
4. ``s / 1000`` (FDT's default temperature);
5. max over tokens → one score per code (B × K);
6. sparsemax over the K codes → weights w with Σw = 1, most of them exactly 0;
7. embedding ``e = w @ C`` (B × D), not normalised.

The logits are tiny (÷ 32,000), so everything here stays fp32.
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: FDT's default ``sd_temperature``; the released models do not override it.
CODEBOOK_TEMPERATURE = 1000.0
#: LayerNorm epsilon inside ``q_map`` (PyTorch default).
QMAP_LN_EPS = 1e-5


def sparsemax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Sparsemax (Martins & Astudillo 2016): the Euclidean projection onto the simplex.

    Sort descending z₍₁₎ ≥ z₍₂₎ ≥ …; k* = max{k : 1 + k·z₍ₖ₎ > Σ_{j≤k} z₍ⱼ₎};
    τ = (Σ_{j≤k*} z₍ⱼ₎ − 1)/k*; output max(z − τ, 0). The row maximum is subtracted first
    (the result is shift-invariant; it keeps the cumulative sums small). Ties are handled by the
    formula itself: equal values share one weight. The ``arange`` is made on the input's device
    (the reference builds it on a module-level device, which crashes for CPU input on a CUDA host).
    """
    z = logits.movedim(dim, -1)
    z = z - z.max(dim=-1, keepdim=True).values
    sorted_z, _ = torch.sort(z, dim=-1, descending=True)
    k = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    cumulative = sorted_z.cumsum(dim=-1)
    support = (1 + k * sorted_z) > cumulative
    k_star = support.to(z.dtype).cumsum(dim=-1).max(dim=-1, keepdim=True).values  # support is a prefix
    tau = (cumulative.gather(-1, k_star.long() - 1) - 1) / k_star
    return torch.clamp(z - tau, min=0).movedim(-1, dim)


class QueryModel(nn.Module):
    """``q_map``: LayerNorm(d_in) → Linear(d_in→D) → GELU → LayerNorm(D) → Linear(D→D)."""

    def __init__(self, d_in: int, dim: int) -> None:
        super().__init__()
        self.q_map = nn.Sequential(nn.LayerNorm(d_in, eps=QMAP_LN_EPS), nn.Linear(d_in, dim), nn.GELU(),
                                   nn.LayerNorm(dim, eps=QMAP_LN_EPS), nn.Linear(dim, dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.q_map(tokens)


class Codebook(nn.Module):
    """``space_dict`` (K × D) and the three per-modality query models (names as the reference's
    ``fdt.*``)."""

    def __init__(self, size: int, dim: int, image_dim: int, text_dim: int, audio_dim: int) -> None:
        super().__init__()
        self.space_dict = nn.Parameter(torch.randn(size, dim))
        self.img_query_model = QueryModel(image_dim, dim)
        self.txt_query_model = QueryModel(text_dim, dim)
        self.audio_query_model = QueryModel(audio_dim, dim)

    def token_scores(self, query_model: QueryModel, tokens: torch.Tensor) -> torch.Tensor:
        """Raw per-token code scores ``q · Cᵀ / √D`` (B × T × K), before mask and temperature."""
        q = query_model(tokens)
        return q @ self.space_dict.T / math.sqrt(self.space_dict.shape[1])

    def pool_scores(self, scores: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Steps 3–7 of the module docstring on token scores → embedding (B × D)."""
        if valid is not None:
            scores = scores * valid.to(scores.dtype).unsqueeze(-1)
        pooled = (scores / CODEBOOK_TEMPERATURE).max(dim=1).values
        return sparsemax(pooled, dim=-1) @ self.space_dict

    def embed(self, query_model: QueryModel, tokens: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Modality tokens (B × T × d_in) [+ validity for text] → unnormalised embedding (B × D)."""
        return self.pool_scores(self.token_scores(query_model, tokens), valid)
