"""Projection heads shared by every modality (psm-reference.md, "Image encoder" / "Audio and text").

All heads in the authors' code are the same two-layer MLP, ``linear1`` → GELU → ``linear2``; the
state-dict names ``linear1``/``linear2`` are kept so released checkpoints load by name.
"""

from __future__ import annotations

import torch
from torch import nn


class MLPHead(nn.Module):
    """``Linear(d_in→d_hidden)`` → GELU → ``Linear(d_hidden→d_out)``."""

    def __init__(self, d_in: int, d_out: int, d_hidden: int | None = None) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_in, d_hidden or d_out)
        self.linear2 = nn.Linear(d_hidden or d_out, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(nn.functional.gelu(self.linear1(x)))


#: Initial value of both biases of every variance head (the reference's ``fill_(-4)``).
STD_HEAD_BIAS_INIT = -4.0


def init_std_head_biases(head: MLPHead) -> None:
    """Fill ``linear1.bias`` and ``linear2.bias`` of a variance head with −4, as the reference does
    for the image and the CLAP heads (only matters when training starts from scratch)."""
    nn.init.constant_(head.linear1.bias, STD_HEAD_BIAS_INIT)
    nn.init.constant_(head.linear2.bias, STD_HEAD_BIAS_INIT)


class ProbabilisticHeads(nn.Module):
    """``mean_head`` and ``std_head`` of PCME++ models.

    ``std_head`` outputs **log σ²** despite its name (the reference's naming is kept for the
    state dict). Both of its biases (``linear1`` and ``linear2``) start at −4 so that a freshly
    initialised model begins with small variances, exactly as the reference initialises it for
    training (``std_head.linear1.bias`` and ``.linear2.bias`` filled with −4).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mean_head = MLPHead(dim, dim)
        self.std_head = MLPHead(dim, dim)
        init_std_head_biases(self.std_head)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the *unnormalised* mean and the log-variance."""
        return self.mean_head(x), self.std_head(x)
