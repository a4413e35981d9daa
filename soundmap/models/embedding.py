"""The embedding object every encoder returns: normalised mean, log-variance and the raw mean.

The raw (unnormalised) mean is kept because the reference combines an audio/image query with text
by adding the *unnormalised* means and re-normalising (psm-reference.md, "Text added to the
query"); once normalised, that sum cannot be recovered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """``x / ‖x‖₂`` along the last axis, as the reference's ``l2normalize`` (no epsilon clamp
    beyond what keeps an all-zero row finite)."""
    return x / x.norm(p=2, dim=-1, keepdim=True).clamp_min(1e-12)


@dataclass(frozen=True)
class Embedding:
    """``mu`` N × D (L2-normalised), ``logvar`` N × D (log σ², probabilistic models) or None,
    ``raw_mu`` N × D (the head output before normalisation)."""

    mu: torch.Tensor
    logvar: torch.Tensor | None
    raw_mu: torch.Tensor

    @classmethod
    def from_raw(cls, raw_mu: torch.Tensor, logvar: torch.Tensor | None = None) -> Embedding:
        """Build from a head's raw mean (normalised here) and optional log-variance."""
        raw_mu = raw_mu.float()
        return cls(mu=l2_normalize(raw_mu), logvar=None if logvar is None else logvar.float(), raw_mu=raw_mu)

    @property
    def probabilistic(self) -> bool:
        return self.logvar is not None

    @property
    def dim(self) -> int:
        return int(self.mu.shape[-1])

    def __len__(self) -> int:
        return int(self.mu.shape[0])

    def __getitem__(self, index: Any) -> Embedding:
        """Row selection (int, slice, index tensor, boolean mask); always keeps the row axis."""
        if isinstance(index, int):
            index = slice(index, index + 1) if index != -1 else slice(-1, None)
        return Embedding(self.mu[index], None if self.logvar is None else self.logvar[index], self.raw_mu[index])

    def to(self, *args: Any, **kwargs: Any) -> Embedding:
        return Embedding(self.mu.to(*args, **kwargs),
                         None if self.logvar is None else self.logvar.to(*args, **kwargs),
                         self.raw_mu.to(*args, **kwargs))

    def cpu(self) -> Embedding:
        return self.to("cpu")

    def detach(self) -> Embedding:
        return Embedding(self.mu.detach(), None if self.logvar is None else self.logvar.detach(), self.raw_mu.detach())

    @staticmethod
    def cat(parts: Sequence[Embedding]) -> Embedding:
        """Concatenate rows; all parts must agree on being probabilistic."""
        if not parts:
            raise ValueError("nothing to concatenate")
        kinds = {p.probabilistic for p in parts}
        if len(kinds) > 1:
            raise ValueError("cannot concatenate probabilistic and deterministic embeddings")
        logvar = torch.cat([p.logvar for p in parts]) if kinds == {True} else None  # type: ignore[misc]
        return Embedding(torch.cat([p.mu for p in parts]), logvar, torch.cat([p.raw_mu for p in parts]))

    @staticmethod
    def combine(a: Embedding, b: Embedding) -> Embedding:
        """Audio (or image) query + text, as the reference's "add text" evaluation:
        ``mu = normalise(raw_a + raw_b)``, ``logvar = logvar_a + logvar_b`` (deterministic: means
        only). A 1-row side broadcasts over the other's rows."""
        raw = a.raw_mu + b.raw_mu
        if a.probabilistic != b.probabilistic:
            raise ValueError("cannot combine a probabilistic with a deterministic embedding")
        logvar = a.logvar + b.logvar if a.logvar is not None and b.logvar is not None else None
        return Embedding(l2_normalize(raw), logvar, raw)
