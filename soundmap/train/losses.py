"""Training objectives of PSM (PCME++) and GeoCLAP (InfoNCE) (psm-reference.md, "Loss").

The formulas follow the authors' criterion code, which is what the released checkpoints were
trained with. Pure tensor functions: the learnable scalars (``negative_scale`` a, ``shift`` b, or
the InfoNCE scale) are passed in, so they can live in the model (``criterion.*`` of a PSM
checkpoint) or in the trainer.

PCME++ for one pair of modalities (p, q), batch of N matched rows::

    d_ij   = ||mu_p_i - mu_q_j||^2 + sum(exp(v_p_i)) + sum(exp(v_q_j))      (CSD)
    logit  = -a * d + b
    L      = 2 * BCE(logit, I) + beta * (VIB(p) + VIB(q))
             + alpha * (BCE(logit, P_pq) + BCE(logit^T, P_qp))
    VIB(x) = -0.5 * mean(1 + v - mu^2 - exp(v)),   dropped (0) when > 10000

``BCE`` is ``binary_cross_entropy_with_logits`` averaged over all N² entries; ``2 * BCE`` is the
reference's shortcut for the (identical) p→q and q→p terms. ``P_pq[i, j] = 1`` where
``logit_ij >= logit_ii`` (pseudo-positives: anything scored at least as well as the true match,
the match itself included); ``P_qp`` is the same rule on the transposed logits.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

VIB_EXPLOSION_LIMIT = 10000.0


def pairwise_csd(mu_p: torch.Tensor, logvar_p: torch.Tensor, mu_q: torch.Tensor,
                 logvar_q: torch.Tensor) -> torch.Tensor:
    """Closed-form sampled distance between every row of p and every row of q (N_p × N_q).

    Written as the squared difference (not ``2 − 2 μ·μ``) as the training criterion does, so it
    is also exact for means that are not unit vectors.
    """
    mu_dist = (mu_p.unsqueeze(1) - mu_q.unsqueeze(0)).pow(2).sum(-1)
    sigma_p = logvar_p.exp().sum(-1)
    sigma_q = logvar_q.exp().sum(-1)
    return mu_dist + sigma_p.unsqueeze(1) + sigma_q.unsqueeze(0)


def csd_logits(mu_p: torch.Tensor, logvar_p: torch.Tensor, mu_q: torch.Tensor, logvar_q: torch.Tensor,
               negative_scale: torch.Tensor | float, shift: torch.Tensor | float) -> torch.Tensor:
    """Match logits ``−a·d + b`` of PCME++ (a = ``negative_scale``, b = ``shift``)."""
    return -negative_scale * pairwise_csd(mu_p, logvar_p, mu_q, logvar_q) + shift


def vib_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL to N(0, I) as PCME++ writes it: ``−0.5·mean(1 + v − μ² − exp(v))`` over all elements.

    Returns 0 (no gradient) above 10000, the reference's guard against a VIB explosion.
    """
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).mean()
    if float(kl.detach()) > VIB_EXPLOSION_LIMIT:
        warnings.warn(f"VIB loss {float(kl):.1f} > {VIB_EXPLOSION_LIMIT:g}; ignoring it for this step", stacklevel=2)
        return kl.new_zeros(())
    return kl


def pseudo_positive_labels(logits: torch.Tensor) -> torch.Tensor:
    """1 where a column's logit is ≥ the row's true-match (diagonal) logit, else 0 (no gradient)."""
    with torch.no_grad():
        diag = logits.diagonal().unsqueeze(1)
        return (logits >= diag).to(logits.dtype)


def identity_targets(n: int, like: torch.Tensor) -> torch.Tensor:
    """The match matrix of a batch of N aligned rows."""
    return torch.eye(n, dtype=like.dtype, device=like.device)


@dataclass(frozen=True)
class PairLoss:
    """A pair's total loss and its parts (floats for logging, the total keeps its graph)."""

    total: torch.Tensor
    parts: Mapping[str, float]


def pcmepp_pair_loss(mu_p: torch.Tensor, logvar_p: torch.Tensor, mu_q: torch.Tensor, logvar_q: torch.Tensor,
                     *, negative_scale: torch.Tensor | float, shift: torch.Tensor | float,
                     vib_beta: float = 1e-4, pseudo_alpha: float = 0.1) -> PairLoss:
    """PCME++ loss of one modality pair (see the module docstring for the formula)."""
    logits = csd_logits(mu_p, logvar_p, mu_q, logvar_q, negative_scale, shift)
    match = F.binary_cross_entropy_with_logits(logits, identity_targets(len(logits), logits))
    total = 2 * match
    parts: dict[str, float] = {"match": float(match.detach())}
    if vib_beta:
        vib = vib_loss(mu_p, logvar_p) + vib_loss(mu_q, logvar_q)
        total = total + vib_beta * vib
        parts["vib"] = float(vib.detach())
    if pseudo_alpha:
        logits_t = logits.t()
        pseudo = (F.binary_cross_entropy_with_logits(logits, pseudo_positive_labels(logits))
                  + F.binary_cross_entropy_with_logits(logits_t, pseudo_positive_labels(logits_t)))
        total = total + pseudo_alpha * pseudo
        parts["pseudo"] = float(pseudo.detach())
    parts["total"] = float(total.detach())
    return PairLoss(total, parts)


def infonce_pair_loss(mu_p: torch.Tensor, mu_q: torch.Tensor, *, logit_scale: torch.Tensor | float) -> PairLoss:
    """Symmetric InfoNCE of one pair on unit-norm means.

    Quirk kept from the PSM code: the learnable "temperature" ``tau`` (init 1) **multiplies** the
    cosine similarities (``logits = cos · tau``), i.e. it is a logit scale, not a divisor.
    """
    logits = (mu_p @ mu_q.t()) * logit_scale
    labels = torch.arange(len(logits), device=logits.device)
    total = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    return PairLoss(total, {"total": float(total.detach())})


def combine_pair_losses(image_audio: torch.Tensor, image_text: torch.Tensor | None = None,
                        audio_text: torch.Tensor | None = None, *, text_weight: float = 0.5,
                        mean_of_pairs: bool = False) -> torch.Tensor:
    """Total over the three pairs as the reference combines them.

    GeoSound (default): ``(1 − w)·L_ia + w·(L_it + L_at)`` with ``w = loss_text_weight`` (0.5).
    SoundingEarth (``mean_of_pairs=True``; the reference's engine.py branches on
    ``dataset_type == "soundingEarth"``): ``(L_ia + L_it + L_at) / 3``, ignoring ``w``. Without
    text, just ``L_ia``.
    """
    if image_text is None and audio_text is None:
        return image_audio
    text_terms = [t for t in (image_text, audio_text) if t is not None]
    if mean_of_pairs:
        return (image_audio + sum(text_terms)) / (1 + len(text_terms))
    return (1 - text_weight) * image_audio + text_weight * sum(text_terms)
