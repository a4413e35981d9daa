"""PCME++ and InfoNCE against values computed by hand from the formulas (numbers in the test).

Crafted batch (2 rows, 2-d):
  mu_p = [[1,0],[0,1]], log var_p = ln 0.1 everywhere (sum exp = 0.2 per row)
  mu_q = [[1,0],[0.6,0.8]], log var_q row0 = ln 0.1 (sum 0.2), row1 = 0 (sum 2.0)
  CSD d = [[0+0.2+0.2, 0.8+0.2+2], [2+0.2+0.2, 0.4+0.2+2]] = [[0.4, 3.0], [2.4, 2.6]]
  logits (a = b = 5) = -5 d + 5 = [[3, -10], [-7, -8]]
  Row 1: logit(1,0) = -7 >= logit(1,1) = -8, so (1,0) is a pseudo-positive; the transposed
  direction has none.
"""

from __future__ import annotations

import math

import pytest
import torch

from soundmap.train.losses import (
    combine_pair_losses,
    csd_logits,
    infonce_pair_loss,
    pairwise_csd,
    pcmepp_pair_loss,
    pseudo_positive_labels,
    vib_loss,
)

LN01 = math.log(0.1)
MU_P = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
LV_P = torch.full((2, 2), LN01, dtype=torch.float64)
MU_Q = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
LV_Q = torch.tensor([[LN01, LN01], [0.0, 0.0]], dtype=torch.float64)


def test_csd_and_logits_by_hand() -> None:
    d = pairwise_csd(MU_P, LV_P, MU_Q, LV_Q)
    assert torch.allclose(d, torch.tensor([[0.4, 3.0], [2.4, 2.6]], dtype=torch.float64))
    logits = csd_logits(MU_P, LV_P, MU_Q, LV_Q, 5.0, 5.0)
    assert torch.allclose(logits, torch.tensor([[3.0, -10.0], [-7.0, -8.0]], dtype=torch.float64))


def test_pseudo_positive_selection() -> None:
    logits = torch.tensor([[3.0, -10.0], [-7.0, -8.0]])
    assert pseudo_positive_labels(logits).tolist() == [[1.0, 0.0], [1.0, 1.0]]
    assert pseudo_positive_labels(logits.t()).tolist() == [[1.0, 0.0], [0.0, 1.0]]
    ties = torch.tensor([[1.0, 1.0, 0.5], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert pseudo_positive_labels(ties).tolist() == [[1, 1, 0], [1, 1, 1], [1, 1, 1]]


def test_vib_by_hand() -> None:
    # p: elements (mu=1): ln0.1 - 0.1, (mu=0): 0.9 + ln0.1 -> KL = -0.5 * mean = 0.95129...
    assert float(vib_loss(MU_P, LV_P)) == pytest.approx(0.9512925464970228, rel=1e-12)
    assert float(vib_loss(MU_Q, LV_Q)) == pytest.approx(0.6006462732485114, rel=1e-12)


def test_vib_explosion_is_skipped() -> None:
    mu = torch.zeros(1, 2)
    logvar = torch.full((1, 2), 12.0)  # exp(12) ~ 1.6e5 -> KL > 10000
    with pytest.warns(UserWarning):
        assert float(vib_loss(mu, logvar)) == 0.0


def test_pcmepp_total_by_hand() -> None:
    # BCE vs identity: mean(sp(-3), sp(-10), sp(-7), sp(8)) where sp = softplus
    bce = 2.0124699058249074
    pseudo_rows = 3.762469905824907   # labels [[1,0],[1,1]]: mean(sp(-3), sp(-10), sp(7), sp(8))
    pseudo_cols = bce                 # transposed direction has no pseudo-positive
    vib = 0.9512925464970228 + 0.6006462732485114
    expected = 2 * bce + 1e-4 * vib + 0.1 * (pseudo_rows + pseudo_cols)
    out = pcmepp_pair_loss(MU_P, LV_P, MU_Q, LV_Q, negative_scale=torch.tensor(5.0, dtype=torch.float64),
                           shift=torch.tensor(5.0, dtype=torch.float64), vib_beta=1e-4, pseudo_alpha=0.1)
    assert float(out.total) == pytest.approx(4.602588986696771, rel=1e-12)
    assert float(out.total) == pytest.approx(expected, rel=1e-12)
    assert out.parts["match"] == pytest.approx(bce, rel=1e-12)


def test_pcmepp_gradients_reach_scale_and_shift() -> None:
    a = torch.tensor(5.0, requires_grad=True)
    b = torch.tensor(5.0, requires_grad=True)
    out = pcmepp_pair_loss(MU_P.float(), LV_P.float(), MU_Q.float(), LV_Q.float(), negative_scale=a, shift=b)
    out.total.backward()
    assert a.grad is not None and b.grad is not None and float(b.grad) != 0.0


def test_infonce_by_hand() -> None:
    # cos = [[1, 0.6], [0, 0.8]], scale 2 multiplies (PSM quirk) -> logits [[2, 1.2], [0, 1.6]]
    out = infonce_pair_loss(MU_P, MU_Q, logit_scale=2.0)
    assert float(out.total) == pytest.approx(0.29873616756976046, rel=1e-12)


def test_combine_pairs_text_weight() -> None:
    ia, it, at = torch.tensor(1.0), torch.tensor(2.0), torch.tensor(4.0)
    assert float(combine_pair_losses(ia, it, at, text_weight=0.5)) == 0.5 * 1 + 0.5 * 6
    assert float(combine_pair_losses(ia)) == 1.0


def test_combine_pairs_soundingearth_is_the_plain_mean() -> None:
    # reference engine.py, dataset_type soundingEarth: (1 + 2 + 4) / 3 = 7/3, text weight ignored
    ia, it, at = torch.tensor(1.0), torch.tensor(2.0), torch.tensor(4.0)
    assert float(combine_pair_losses(ia, it, at, text_weight=0.5, mean_of_pairs=True)) == pytest.approx(7 / 3)
    assert float(combine_pair_losses(ia, mean_of_pairs=True)) == 1.0
