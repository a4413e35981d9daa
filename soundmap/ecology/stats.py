"""Correlation statistics for the ecology views: band correlations and the Mantel test.

All functions are pure (arrays in, numbers out). Two kinds of question are asked:

* *Do two maps agree?* (``soundmap bga --compare``): Pearson and Spearman r between the bands of
  two rasters over the cells valid in both. No parametric p-value is reported: neighbouring cells
  are strongly autocorrelated, so the textbook p (which assumes independent samples) would be
  wildly optimistic.
* *Do two similarity structures agree?* (``soundmap align``): the entries of two pairwise
  similarity matrices are not independent either (every recording appears in N − 1 pairs), so
  significance comes from a Mantel permutation test: the rows and columns of one matrix are
  permuted *jointly* (relabelling the recordings), which keeps each matrix's internal structure
  and breaks only the link between them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from ..errors import InputError

Alternative = Literal["two-sided", "greater", "less"]

MIN_MANTEL_SIZE = 4
"""Fewest recordings a Mantel test accepts (3 give 3 pairs and only 6 distinct permutations)."""


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r of two equally long vectors; NaN when either is constant or shorter than 2."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.size != y.size:
        raise ValueError(f"pearson: lengths differ ({x.size} vs {y.size})")
    if x.size < 2:
        return math.nan
    dx = x - x.mean()
    dy = y - y.mean()
    denom = math.sqrt(float(dx @ dx) * float(dy @ dy))
    if denom == 0.0:
        return math.nan
    return float(np.clip((dx @ dy) / denom, -1.0, 1.0))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of the ranks they span (numpy only: importing
    scipy.stats for this would cost seconds at every CLI start)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(v, kind="mergesort")
    ordered = v[order]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(ordered) != 0) + 1])
    ends = np.concatenate([starts[1:], [v.size]])
    ranks = np.empty(v.size, dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman ρ: the Pearson r of the ranks (ties get their average rank)."""
    return pearson(average_ranks(x), average_ranks(y))


@dataclass(frozen=True)
class BandCorrelation:
    """Agreement of one band of two rasters over the cells valid in both."""

    band: str
    pearson: float
    spearman: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {key: (None if isinstance(v, float) and math.isnan(v) else v) for key, v in asdict(self).items()}


def band_correlations(a: np.ndarray, b: np.ndarray, names: tuple[str, ...]) -> list[BandCorrelation]:
    """Per-band Pearson/Spearman of two ``bands × rows × cols`` stacks (NaN = nodata, skipped).

    A cell counts only if it is finite in *every* band of both stacks, so all bands are compared on
    the same cells.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.shape[0] != len(names):
        raise ValueError(f"band_correlations: shapes {a.shape} and {b.shape} for {len(names)} bands")
    valid = np.all(np.isfinite(a), axis=0) & np.all(np.isfinite(b), axis=0)
    return [BandCorrelation(band=name, pearson=pearson(a[k][valid], b[k][valid]),
                            spearman=spearman(a[k][valid], b[k][valid]), n=int(valid.sum()))
            for k, name in enumerate(names)]


def cosine_similarity_matrix(vectors: np.ndarray) -> np.ndarray:
    """N × N cosine similarities of the rows of ``vectors`` (an all-zero row has similarity 0)."""
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    unit = np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)
    return np.clip(unit @ unit.T, -1.0, 1.0)


def upper_triangle(matrix: np.ndarray) -> np.ndarray:
    """The entries above the diagonal, row by row (each unordered pair once, no self-pairs)."""
    m = np.asarray(matrix)
    i, j = np.triu_indices(m.shape[0], k=1)
    return m[i, j]


@dataclass(frozen=True)
class MantelResult:
    """Pearson r between two similarity matrices' upper triangles and its permutation p-value."""

    r: float
    p: float
    n: int            # matrix size (recordings)
    pairs: int        # upper-triangle entries correlated
    permutations: int
    alternative: str
    p_pairs: float = math.nan  # the study's plain p: pairs treated as independent (see pairs_p_value)

    def to_dict(self) -> dict[str, Any]:
        return {key: (None if isinstance(v, float) and math.isnan(v) else v) for key, v in asdict(self).items()}


PERMUTATION_BATCH_VALUES = 4_000_000
"""Permuted similarities held at once (×8 bytes, ×3 with the index arrays): flat memory for any N."""


def mantel(a: np.ndarray, b: np.ndarray, *, permutations: int = 999, seed: int = 0,
           alternative: Alternative = "two-sided") -> MantelResult:
    """Mantel test: Pearson r of the upper triangles of two symmetric N × N matrices.

    The null distribution comes from ``permutations`` random relabellings π of ``b``'s recordings
    (``b[π][:, π]``: rows and columns permuted jointly; seeded by ``seed``, so results repeat).
    The p-value counts the observed arrangement as one of the permutations,
    ``p = (1 + #{r_π at least as extreme as r}) / (1 + permutations)``, never 0; "at least as
    extreme" is ``|r_π| ≥ |r|`` for ``two-sided`` (the default: similarity structures could in
    principle disagree), ``r_π ≥ r`` for ``greater`` and ``r_π ≤ r`` for ``less``. Only the
    diagonal-free upper triangle enters (each pair once; self-similarity is 1 by construction).

    A permutation only reorders ``b``'s off-diagonal entries, so their mean and spread never change
    and each permuted r is one dot product with the centred ``a`` entries.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    _check_square_pair(a, b)
    if alternative not in ("two-sided", "greater", "less"):
        raise InputError(f"--alternative {alternative!r} is not one of two-sided, greater, less")
    if permutations < 1:
        raise InputError(f"--permutations must be at least 1, got {permutations}")
    n = a.shape[0]
    iu, ju = np.triu_indices(n, k=1)
    x = a[iu, ju]
    y = b[iu, ju]
    r = pearson(x, y)
    if math.isnan(r):
        return MantelResult(r=math.nan, p=math.nan, n=n, pairs=int(x.size), permutations=permutations,
                            alternative=alternative)
    xc = x - x.mean()
    scale = math.sqrt(float(xc @ xc)) * math.sqrt(float(((y - y.mean()) ** 2).sum()))
    rng = np.random.default_rng(seed)
    batch = max(1, min(256, PERMUTATION_BATCH_VALUES // max(1, x.size)))
    extreme = 0
    done = 0
    tolerance = 1e-12  # ties with the observed r (e.g. the identity permutation) count as extreme
    while done < permutations:
        size = min(batch, permutations - done)
        perms = np.stack([rng.permutation(n) for _ in range(size)])
        permuted = b[perms[:, iu], perms[:, ju]]           # size × pairs
        r_perm = (permuted @ xc) / scale                     # Σ xc = 0, so y's mean drops out
        if alternative == "two-sided":
            extreme += int(np.sum(np.abs(r_perm) >= abs(r) - tolerance))
        elif alternative == "greater":
            extreme += int(np.sum(r_perm >= r - tolerance))
        else:
            extreme += int(np.sum(r_perm <= r + tolerance))
        done += size
    return MantelResult(r=r, p=(1 + extreme) / (1 + permutations), n=n, pairs=int(x.size),
                        permutations=permutations, alternative=alternative,
                        p_pairs=pairs_p_value(r, int(x.size), alternative))


def pairs_p_value(r: float, pairs: int, alternative: Alternative = "two-sided") -> float:
    """The textbook Pearson p-value of ``r`` over ``pairs`` upper-triangle entries, as the
    cross-modal urban sensing study reports it: ``t = r·√(m−2)/√(1−r²)`` with Student's t of
    ``m − 2`` degrees of freedom (m = pairs). It treats the pairs as independent — they are not
    (each recording is in N − 1 pairs) — so it is far smaller than the Mantel p; it is reported
    only to compare with the study's numbers (e.g. London's aerial r = 0.12 over 4950 pairs gives
    p ≈ 1e-17, the study's value)."""
    from scipy.stats import t as student_t   # scipy is slow to import: only when a test runs

    if pairs < 3 or math.isnan(r):
        return math.nan
    if abs(r) >= 1.0:
        return 0.0
    statistic = r * math.sqrt(pairs - 2) / math.sqrt(1.0 - r * r)
    if alternative == "greater":
        return float(student_t.sf(statistic, pairs - 2))
    if alternative == "less":
        return float(student_t.cdf(statistic, pairs - 2))
    return float(2.0 * student_t.sf(abs(statistic), pairs - 2))


def _check_square_pair(a: np.ndarray, b: np.ndarray) -> None:
    """Both matrices square, the same size, symmetric, and large enough to permute."""
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape != b.shape:
        raise ValueError(f"mantel needs two square matrices of the same size, got {a.shape} and {b.shape}")
    if a.shape[0] < MIN_MANTEL_SIZE:
        raise InputError(f"a Mantel test needs at least {MIN_MANTEL_SIZE} recordings, got {a.shape[0]}")
    for m in (a, b):
        if not np.allclose(m, m.T, equal_nan=True):
            raise ValueError("mantel needs symmetric similarity matrices")
        if not np.all(np.isfinite(m[np.triu_indices(m.shape[0], k=1)])):
            raise ValueError("mantel needs finite similarities; drop recordings without embeddings first")


def grouped_mantel(a: np.ndarray, b: np.ndarray, groups: np.ndarray, **kwargs: Any) -> dict[str, MantelResult]:
    """:func:`mantel` within each group (e.g. a city) on the sub-matrices of its members.

    Groups with fewer than :data:`MIN_MANTEL_SIZE` members are left out (no test is possible).
    """
    groups = np.asarray(groups).astype(str)
    out: dict[str, MantelResult] = {}
    for name in sorted(set(groups.tolist())):
        members = np.flatnonzero(groups == name)
        if members.size < MIN_MANTEL_SIZE:
            continue
        sub = np.ix_(members, members)
        out[name] = mantel(a[sub], b[sub], **kwargs)
    return out
