"""Scores between a query embedding and cell embeddings (psm-reference.md, "Scores and metrics").

Higher is always better: ``−CSD`` for probabilistic models, cosine for deterministic ones.
"""

from __future__ import annotations

import torch

from soundmap.errors import InputError
from soundmap.models.embedding import Embedding

SCORE_METHODS: tuple[str, ...] = ("csd", "cosine")


def closed_form_sampled_distance(mu_p: torch.Tensor, logvar_p: torch.Tensor,
                                 mu_q: torch.Tensor, logvar_q: torch.Tensor,
                                 precision: torch.dtype = torch.float32) -> torch.Tensor:
    """PCME++ closed-form sampled distance between every row of p (Q × D) and of q (N × D) → Q × N.

    ``d = ‖μp − μq‖² + Σ exp(vp) + Σ exp(vq) = 2 − 2 μp·μq + Σ exp(vp) + Σ exp(vq)`` with unit
    means μ and log-variances v. Computed from one matrix product and two row sums, so memory is
    Q × N, never Q × N × D.

    ``precision=torch.float64`` reproduces the reference's evaluation (``compute_csd_sims`` with
    ``to_double``): exp(v) in float32, then the dot products and the sums in float64. Retrieval
    ranks need it — in float32 the Σ exp(v) terms (≈ 9 for σ² ≈ e⁻⁴) absorb dot-product
    differences below ~1e-6 and turn them into ties. Maps keep the float32 default.
    """
    var_p = variance_sum(logvar_p, precision)
    var_q = variance_sum(logvar_q, precision)
    dot = mu_p.float().to(precision) @ mu_q.float().to(precision).T
    return csd_from_parts(dot, var_p, var_q)


def variance_sum(logvar: torch.Tensor, precision: torch.dtype = torch.float32) -> torch.Tensor:
    """``Σ exp(v)`` per row: the only part of a side's log-variances the closed-form distance uses,
    so a caller scoring many queries against the same cells can compute it once per cell."""
    return logvar.float().exp().to(precision).sum(dim=-1)


def csd_from_parts(dot: torch.Tensor, var_p: torch.Tensor, var_q: torch.Tensor) -> torch.Tensor:
    """The closed-form sampled distance from its parts: dot products of unit means (P × Q) and
    the two sides' :func:`variance_sum` (P,) and (Q,)."""
    return 2.0 - 2.0 * dot + var_p[:, None] + var_q[None, :]


def cosine_similarity(mu_p: torch.Tensor, mu_q: torch.Tensor) -> torch.Tensor:
    """Dot products of unit means (Q × N)."""
    return mu_p.float() @ mu_q.float().T


def score(query: Embedding, cells: Embedding, method: str | None = None,
          precision: torch.dtype = torch.float32) -> torch.Tensor:
    """``−CSD`` (``"csd"``) or cosine (``"cosine"``) of each query row against each cell.

    Returns (N,) for a 1-row query, (Q, N) otherwise. ``method`` None picks CSD when both sides
    are probabilistic, else cosine. ``precision`` applies to CSD only (float64 = the reference's
    retrieval evaluation); cosine is float32 as the reference computes it.
    """
    if method is None:
        method = "csd" if query.probabilistic and cells.probabilistic else "cosine"
    if method not in SCORE_METHODS:
        raise InputError(f"unknown score method {method!r}; use csd or cosine")
    cells_mu = cells.mu.to(query.mu.device)
    if method == "csd":
        if query.logvar is None or cells.logvar is None:
            raise InputError("csd needs probabilistic (PSM) embeddings; use --score cosine for GeoCLAP models")
        scores = -closed_form_sampled_distance(query.mu, query.logvar, cells_mu, cells.logvar.to(query.mu.device),
                                               precision=precision)
    else:
        scores = cosine_similarity(query.mu, cells_mu)
    return scores[0] if len(query) == 1 else scores
