"""Correlations and the Mantel test, against hand-computed values and brute-force enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from soundmap.ecology.stats import (band_correlations, cosine_similarity_matrix, grouped_mantel, mantel, pearson,
                                    spearman, upper_triangle)
from soundmap.errors import InputError


def symmetric_from_upper(values: np.ndarray, n: int, diagonal: float = 1.0) -> np.ndarray:
    m = np.full((n, n), diagonal)
    i, j = np.triu_indices(n, k=1)
    m[i, j] = values
    m[j, i] = values
    return m


def test_pearson_and_spearman_by_hand() -> None:
    x = np.array([1, 2, 3, 4, 5, 6.0])
    y = np.array([2, 1, 4, 3, 6, 5.0])
    # deviations (-2.5 -1.5 -.5 .5 1.5 2.5) and (-1.5 -2.5 .5 -.5 2.5 1.5): 14.5 / 17.5
    assert pearson(x, y) == pytest.approx(14.5 / 17.5)
    # ranks of y**3 equal those of y; Spearman ignores the monotone transform
    assert spearman(x, y ** 3) == pytest.approx(14.5 / 17.5)
    assert math.isnan(pearson(x, np.ones(6)))


def test_average_ranks_share_ties() -> None:
    from soundmap.ecology.stats import average_ranks

    # sorted: 1 (rank 1), 2 2 (ranks 2, 3 → 2.5), 5 (4), 7 7 7 (5, 6, 7 → 6)
    assert average_ranks(np.array([7, 2, 5, 7, 1, 2, 7.0])).tolist() == [6, 2.5, 4, 6, 1, 2.5, 6]


def test_band_correlations_use_cells_valid_in_every_band() -> None:
    a = np.arange(12, dtype=float).reshape(3, 2, 2)
    b = 2 * a + 1
    b[1, 0, 0] = np.nan      # drops cell (0, 0) from every band
    b[2] = -a[2]
    out = band_correlations(a, b, ("anthrophony", "biophony", "geophony"))
    assert [c.n for c in out] == [3, 3, 3]
    assert out[0].pearson == pytest.approx(1.0) and out[2].pearson == pytest.approx(-1.0)


def test_upper_triangle_skips_the_diagonal() -> None:
    m = np.arange(16).reshape(4, 4)
    assert upper_triangle(m).tolist() == [1, 2, 3, 6, 7, 11]


def test_mantel_recovers_a_known_correlation() -> None:
    rng = np.random.default_rng(0)
    n = 30
    pairs = n * (n - 1) // 2
    x = rng.normal(size=pairs)
    noise = rng.normal(size=pairs)
    zx = (x - x.mean()) / x.std()
    noise -= zx * (noise @ zx) / (zx @ zx)          # orthogonal to x ...
    noise -= noise.mean()
    zn = noise / noise.std()
    y = 0.6 * zx + 0.8 * zn                           # ... so corr(x, y) = 0.6 exactly
    result = mantel(symmetric_from_upper(x, n), symmetric_from_upper(y, n), permutations=999, seed=1)
    assert result.r == pytest.approx(0.6, abs=1e-12)
    assert result.p < 0.01
    assert result.p == pytest.approx(1 / 1000)        # nothing in 999 permutations is as extreme
    assert (result.n, result.pairs, result.permutations) == (30, 435, 999)


def test_mantel_on_independent_matrices_is_not_significant() -> None:
    rng = np.random.default_rng(7)
    a = cosine_similarity_matrix(rng.normal(size=(25, 8)))
    b = cosine_similarity_matrix(rng.normal(size=(25, 8)))
    result = mantel(a, b, permutations=999, seed=0)
    assert result.p > 0.05
    assert abs(result.r) < 0.2


def test_mantel_p_matches_brute_force_enumeration() -> None:
    """For 5 recordings all 120 relabellings can be enumerated: the exact permutation p."""
    rng = np.random.default_rng(11)
    n = 5
    a = cosine_similarity_matrix(rng.normal(size=(n, 3)))
    b = 0.5 * a + 0.5 * cosine_similarity_matrix(rng.normal(size=(n, 3)))
    iu = np.triu_indices(n, k=1)
    r_obs = np.corrcoef(a[iu], b[iu])[0, 1]
    perms = [np.corrcoef(a[iu], b[np.ix_(p, p)][iu])[0, 1] for p in itertools.permutations(range(n))]
    exact_two = np.mean(np.abs(perms) >= abs(r_obs) - 1e-12)
    exact_greater = np.mean(np.array(perms) >= r_obs - 1e-12)
    two = mantel(a, b, permutations=20000, seed=3)
    greater = mantel(a, b, permutations=20000, seed=3, alternative="greater")
    assert two.r == pytest.approx(r_obs)
    assert two.p == pytest.approx(exact_two, abs=0.015)
    assert greater.p == pytest.approx(exact_greater, abs=0.015)


def test_mantel_is_reproducible_with_a_seed() -> None:
    rng = np.random.default_rng(5)
    a = cosine_similarity_matrix(rng.normal(size=(12, 4)))
    b = cosine_similarity_matrix(rng.normal(size=(12, 4)))
    assert mantel(a, b, seed=4).p == mantel(a, b, seed=4).p


def test_grouped_mantel_tests_each_group_on_its_own() -> None:
    rng = np.random.default_rng(2)
    n_per = 20
    emb = rng.normal(size=(2 * n_per, 6))
    a = cosine_similarity_matrix(emb)
    b = cosine_similarity_matrix(emb + 0.3 * rng.normal(size=emb.shape))   # group A: aligned ...
    other = cosine_similarity_matrix(rng.normal(size=(n_per, 6)))
    b[n_per:, n_per:] = other                                               # ... group B: not
    groups = np.array(["A"] * n_per + ["B"] * n_per + [])
    groups_with_tiny = np.concatenate([groups, ["C", "C"]])
    a2 = np.pad(a, ((0, 2), (0, 2)), constant_values=0.1)
    b2 = np.pad(b, ((0, 2), (0, 2)), constant_values=0.1)
    np.fill_diagonal(a2, 1)
    np.fill_diagonal(b2, 1)
    out = grouped_mantel(a2, b2, groups_with_tiny, permutations=999, seed=0)
    assert set(out) == {"A", "B"}           # C has 2 members: no test possible
    assert out["A"].r > 0.5 and out["A"].p < 0.01
    assert out["B"].p > 0.05
    assert out["A"].n == out["B"].n == n_per


def test_mantel_refuses_too_few_recordings() -> None:
    with pytest.raises(InputError, match="at least 4"):
        mantel(np.eye(3), np.eye(3))
