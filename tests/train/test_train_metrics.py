"""Retrieval metrics against ranks written by hand (average ties, strict Recall@K)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from soundmap.train.metrics import median_rank, ranks_of_matches, recall_at, retrieval_metrics

# Row i's true match is column i.
SCORES = np.array([
    [0.9, 0.5, 0.9, 0.1],   # match 0.9 tied with one other, none better -> rank 1.5
    [0.2, 0.3, 0.3, 0.3],   # three-way tie at the top, match among them -> rank 2
    [0.8, 0.1, 0.4, 0.5],   # two better, no tie -> rank 3
    [0.7, 0.7, 0.7, 0.1],   # worst -> rank 4
])
HAND_RANKS = [1.5, 2.0, 3.0, 4.0]


def test_ranks_average_ties_by_hand() -> None:
    assert ranks_of_matches(SCORES).tolist() == HAND_RANKS


def test_ranks_agree_with_pandas_rank_descending() -> None:
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, size=(12, 12)).astype(np.float64)  # many ties
    expected = [pd.Series(scores[i]).rank(ascending=False).iloc[i] for i in range(12)]
    assert ranks_of_matches(torch.from_numpy(scores)).tolist() == expected


def test_recall_is_strictly_less_than_k_and_median() -> None:
    ranks = np.array(HAND_RANKS)
    assert recall_at(ranks, 2) == 0.25        # only 1.5 < 2; rank 2 itself does not count
    assert recall_at(ranks, 3) == 0.5         # 1.5 and 2
    assert recall_at(ranks, 4.5) == 1.0
    assert median_rank(ranks) == 2.5


def test_retrieval_metrics_uses_float_ten_percent_of_gallery() -> None:
    m = retrieval_metrics(SCORES, k=3)
    assert m.k_percent == pytest.approx(0.4)  # 10 % of 4, kept as a float
    assert m.recall_at_10pct == 0.0           # no rank < 0.4
    assert m.recall_at_k == 0.5
    assert m.median_rank == 2.5
    assert m.gallery_size == 4 and m.queries == 4


def test_ten_percent_of_twenty_is_strict() -> None:
    # gallery of 20: K = 2.0; ranks 1, 2, 1.5 -> only ranks 1 and 1.5 count
    scores = np.zeros((3, 20))
    scores[0, 0] = 1.0                  # rank 1
    scores[1, 0] = 2.0; scores[1, 1] = 1.0   # one better -> rank 2
    scores[2, 2] = 1.0; scores[2, 5] = 1.0   # tie at the top -> rank 1.5
    m = retrieval_metrics(scores, k=100)
    assert m.k_percent == 2.0
    assert m.recall_at_10pct == pytest.approx(2 / 3)
    assert m.median_rank == 1.5
    assert m.recall_at_k == 1.0


def test_explicit_targets() -> None:
    scores = np.array([[0.1, 0.9], [0.3, 0.2]])
    assert ranks_of_matches(scores, targets=[1, 1]).tolist() == [1.0, 2.0]


def test_evaluation_ranks_csd_in_float64_like_the_reference() -> None:
    """compute_csd_sims(to_double=True): image e1's match (audio e1, d = 16) beats audio
    b = (1 − 2⁻²⁴, s, 0…) (d = 16 + 2⁻²³) → rank 1, not the float32 tie's 1.5. Image 2 = e2 is
    closer to b (d ≈ 18 − 2s) than to e1 (d = 18) → rank 1. So the I2A median rank is 1."""
    import math

    from soundmap.models.embedding import Embedding
    from soundmap.train.evaluate import EvalOptions, evaluate_embeddings

    dim = 8
    e1, e2 = torch.zeros(dim), torch.zeros(dim)
    e1[0], e2[1] = 1.0, 1.0
    b = torch.zeros(dim)
    b[0] = 1.0 - 2.0 ** -24
    b[1] = math.sqrt(1.0 - float(b[0]) ** 2)
    zeros = torch.zeros(2, dim)
    images = torch.stack([e1, e2])
    audios = torch.stack([e1, b])
    i2a, a2i = evaluate_embeddings(Embedding(images, zeros, images), Embedding(audios, zeros, audios), None,
                                   EvalOptions(k=2), "csd")
    assert i2a.median_rank == 1.0
    assert a2i.median_rank == 1.5  # audio e1 → rank 1; audio b is nearer image e1 than e2 → rank 2
