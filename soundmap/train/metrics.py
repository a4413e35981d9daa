"""Retrieval metrics exactly as the PSM evaluation computes them (psm-reference.md, "Scores and metrics").

Conventions reproduced on purpose, so that numbers are comparable with the papers' tables:

* The score matrix has one row per query and one column per gallery item; the true match of query
  ``i`` is gallery item ``i`` (or ``targets[i]``). Higher score = better (−CSD or cosine).
* A query's rank is the 1-based rank of its true match among all gallery items by **descending**
  score with **average** ties — pandas ``Series.rank(ascending=False)`` semantics: with ``g``
  items strictly better and ``t`` items tied with the match (itself included) the rank is
  ``g + (t + 1) / 2``.
* ``Recall@K`` counts ``rank < K`` — *strictly* less, so it is effectively "top K − 1" for an
  integer K. The reference code does this; we keep it so that R@100 / R@10 % numbers match the
  published ones, and say so wherever it is printed.
* ``Recall@10 %`` uses ``K = 0.10 × gallery size`` as a float (no rounding), also as the reference.
* Median rank is the median of the (possibly fractional) ranks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch


def ranks_of_matches(scores: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray | None = None) -> np.ndarray:
    """1-based average-tie rank of each row's true match, by descending score.

    ``scores`` is Q × N; ``targets`` (length Q) gives the column of each row's match and defaults
    to the diagonal. Ties compare exactly (no tolerance), as pandas does; compute the scores in
    float64 if you need the reference's precision.
    """
    s = torch.as_tensor(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be a Q x N matrix, got shape {tuple(s.shape)}")
    q = s.shape[0]
    idx = torch.arange(q) if targets is None else torch.as_tensor(targets, dtype=torch.long)
    if idx.shape != (q,):
        raise ValueError("targets must have one entry per query row")
    true = s.gather(1, idx.view(-1, 1).to(s.device))
    better = (s > true).sum(dim=1).to(torch.float64)
    tied = (s == true).sum(dim=1).to(torch.float64)  # includes the match itself
    return (better + (tied + 1.0) / 2.0).cpu().numpy()


def recall_at(ranks: np.ndarray, k: float) -> float:
    """Fraction of queries whose match has ``rank < k`` (strict, as the reference: top K−1)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return float((ranks < k).mean()) if ranks.size else float("nan")


def median_rank(ranks: np.ndarray) -> float:
    """Median of the ranks (fractional ranks from ties included)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return float(np.median(ranks)) if ranks.size else float("nan")


@dataclass(frozen=True)
class RetrievalMetrics:
    """One retrieval direction's numbers; ``k_percent`` is the float K used for R@10 %."""

    recall_at_10pct: float
    median_rank: float
    recall_at_k: float
    k: float
    k_percent: float
    gallery_size: int
    queries: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def retrieval_metrics(scores: torch.Tensor | np.ndarray, *, k: float = 100, percent: float = 10.0,
                      targets: torch.Tensor | np.ndarray | None = None) -> RetrievalMetrics:
    """R@``percent`` %, median rank and R@``k`` of a query × gallery score matrix."""
    ranks = ranks_of_matches(scores, targets)
    gallery = int(torch.as_tensor(scores).shape[1])
    k_pct = percent / 100.0 * gallery
    return RetrievalMetrics(
        recall_at_10pct=recall_at(ranks, k_pct),
        median_rank=median_rank(ranks),
        recall_at_k=recall_at(ranks, k),
        k=float(k),
        k_percent=float(k_pct),
        gallery_size=gallery,
        queries=int(ranks.size),
    )
