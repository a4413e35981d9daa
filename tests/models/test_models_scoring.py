"""CSD / cosine scores and Embedding helpers against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from soundmap.errors import InputError
from soundmap.models.embedding import Embedding
from soundmap.models.scoring import closed_form_sampled_distance, score


def test_csd_hand_values() -> None:
    # p = μ (1, 0), σ² (0.1, 0.2);  q1 = μ (0, 1), σ² (0.3, 0.4);  q2 = μ (1, 0), σ² (0.3, 0.4)
    # d(p, q1) = 2 − 2·0 + 0.3 + 0.7 = 3.0 ;  d(p, q2) = 2 − 2·1 + 0.3 + 0.7 = 1.0
    mu_p = torch.tensor([[1.0, 0.0]])
    v_p = torch.log(torch.tensor([[0.1, 0.2]]))
    mu_q = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    v_q = torch.log(torch.tensor([[0.3, 0.4], [0.3, 0.4]]))
    torch.testing.assert_close(closed_form_sampled_distance(mu_p, v_p, mu_q, v_q), torch.tensor([[3.0, 1.0]]))
    query = Embedding(mu_p, v_p, mu_p)
    cells = Embedding(mu_q, v_q, mu_q)
    scores = score(query, cells, "csd")
    assert scores.shape == (2,)
    torch.testing.assert_close(scores, torch.tensor([-3.0, -1.0]))
    # equals ‖μp − μq‖² + Σσp² + Σσq² computed directly
    direct = ((mu_p - mu_q) ** 2).sum(1) + 0.3 + 0.7
    torch.testing.assert_close(-scores, direct)


def test_score_shapes_cosine_and_errors() -> None:
    s = 1 / math.sqrt(2)
    query = Embedding.from_raw(torch.tensor([[2.0, 0.0], [0.0, 3.0]]))
    cells = Embedding.from_raw(torch.tensor([[1.0, 1.0], [0.0, -5.0], [4.0, 0.0]]))
    got = score(query, cells, "cosine")
    torch.testing.assert_close(got, torch.tensor([[s, 0.0, 1.0], [s, -1.0, 0.0]]))
    assert score(query[0], cells, "cosine").shape == (3,)
    with pytest.raises(InputError, match="probabilistic"):
        score(query, cells, "csd")
    with pytest.raises(InputError):
        score(query, cells, "euclid")


def test_combine_adds_raw_means_and_log_variances() -> None:
    # raw a (3, 0) + raw b (0, 4) = (3, 4) → normalised (0.6, 0.8); log σ² summed
    a = Embedding.from_raw(torch.tensor([[3.0, 0.0]]), torch.tensor([[0.1, 0.2]]))
    b = Embedding.from_raw(torch.tensor([[0.0, 4.0]]), torch.tensor([[0.3, 0.5]]))
    c = Embedding.combine(a, b)
    torch.testing.assert_close(c.mu, torch.tensor([[0.6, 0.8]]))
    torch.testing.assert_close(c.logvar, torch.tensor([[0.4, 0.7]]))
    torch.testing.assert_close(c.raw_mu, torch.tensor([[3.0, 4.0]]))
    # the normalised means alone would give (1, 1)/√2, not (0.6, 0.8)
    assert not torch.allclose(c.mu, torch.tensor([[s := 1 / math.sqrt(2), s]]))
    det = Embedding.combine(Embedding.from_raw(torch.tensor([[3.0, 0.0]])), Embedding.from_raw(torch.tensor([[0.0, 4.0]])))
    assert det.logvar is None
    torch.testing.assert_close(det.mu, torch.tensor([[0.6, 0.8]]))


def test_embedding_helpers() -> None:
    e = Embedding.from_raw(torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]]), torch.zeros(3, 2))
    assert len(e) == 3 and e.dim == 2 and e.probabilistic
    torch.testing.assert_close(e.mu[0], torch.tensor([0.6, 0.8]))
    assert len(e[1]) == 1 and len(e[1:]) == 2 and len(e[torch.tensor([True, False, True])]) == 2
    joined = Embedding.cat([e[0], e[2]])
    torch.testing.assert_close(joined.raw_mu, torch.tensor([[3.0, 4.0], [1.0, 0.0]]))
    assert joined.to("cpu").logvar.shape == (2, 2)
    with pytest.raises(ValueError):
        Embedding.cat([e, Embedding.from_raw(torch.ones(1, 2))])


def _near_tie() -> tuple[Embedding, Embedding]:
    """Query e1 with σ² = 1 in 8 dims (Σσ² = 8) against a = e1 and b = (1 − 2⁻²⁴, s, 0, …), same σ².

    By hand: d(q, a) = 2 − 2 + 8 + 8 = 16 and d(q, b) = 2 − 2(1 − 2⁻²⁴) + 16 = 16 + 2⁻²³. In float32
    the 2⁻²³ is lost when 8 is added (ulp(8) = 2⁻²⁰), so a and b tie; float64 keeps them apart.
    """
    dim = 8
    q = torch.zeros(1, dim)
    q[0, 0] = 1.0
    b0 = 1.0 - 2.0 ** -24
    b = torch.zeros(1, dim)
    b[0, 0], b[0, 1] = b0, math.sqrt(1.0 - b0 * b0)
    gallery = torch.cat([q, b])
    return Embedding(q, torch.zeros(1, dim), q), Embedding(gallery, torch.zeros(2, dim), gallery)


def test_csd_float64_precision_separates_what_float32_ties() -> None:
    query, gallery = _near_tie()
    fp32 = score(query, gallery, "csd")
    fp64 = score(query, gallery, "csd", precision=torch.float64)
    assert fp32.dtype == torch.float32 and float(fp32[0]) == float(fp32[1]) == -16.0
    assert fp64.dtype == torch.float64
    assert float(fp64[0]) == -16.0 and float(fp64[1]) == -(16.0 + 2.0 ** -23)
