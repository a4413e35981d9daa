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
