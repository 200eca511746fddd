"""DeLong's variance of the AUROC, its confidence interval and the paired test.

The variance follows DeLong, DeLong & Clarke-Pearson (Biometrics 1988): with ``m``
positives ``X_i`` and ``n`` negatives ``Y_j`` and the kernel ``psi(x, y) = 1 if x > y,
1/2 if x == y, 0 otherwise``, the structural components are

- ``V10(X_i) = mean_j psi(X_i, Y_j)`` for each positive,
- ``V01(Y_j) = mean_i psi(X_i, Y_j)`` for each negative,

and ``Cov(AUC) = S10 / m + S01 / n`` with ``S10``, ``S01`` the sample covariances
(``ddof=1``) of the components across the score vectors compared. The components are
computed in ``O(N log N)`` from midranks (Sun & Xu, IEEE Signal Processing Letters 2014):
``V10(X_i) = (rank of X_i among all - rank of X_i among positives) / n`` and
``V01(Y_j) = 1 - (rank of Y_j among all - rank of Y_j among negatives) / m``.

The confidence interval is the plain normal (Wald) interval ``AUC +/- z * SE`` clipped
to ``[0, 1]``, as in pROC's ``ci.auc(method="delong")``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np
from numpy.typing import ArrayLike

from cxrlab.errors import InputError
from cxrlab.metrics._inputs import as_binary, check_confidence



def rankdata(values: ArrayLike, axis: int = -1) -> np.ndarray:
    """Average ranks (1-based, ties share their mean rank) along ``axis``.

    What ``scipy.stats.rankdata(values, axis=axis)`` returns for finite input, in NumPy
    alone: importing ``scipy.stats`` costs about half a second, which every light
    command (``cxrlab metrics ...``) would pay.
    """
    array = np.asarray(values, dtype=float)
    moved = np.moveaxis(array, axis, -1)
    rows = moved.reshape(-1, moved.shape[-1]) if moved.ndim else moved.reshape(1, 1)
    out = np.empty(rows.shape, dtype=float)
    for r, row in enumerate(rows):
        order = np.argsort(row, kind="mergesort")
        ordered = row[order]
        first = np.concatenate([[True], ordered[1:] != ordered[:-1]]) if row.size else \
            np.zeros(0, dtype=bool)
        starts = np.flatnonzero(first)
        counts = np.diff(np.concatenate([starts, [row.size]]))
        out[r, order] = (starts + (counts + 1) / 2.0)[np.cumsum(first) - 1]
    return np.moveaxis(out.reshape(moved.shape), -1, axis)


def structural_components(
    labels: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and DeLong structural components of ``K`` score vectors on the same cases.

    Args:
        labels: ``bool [N]`` with at least one positive and one negative (no NaN).
        scores: ``float [K, N]``, one row per scorer.

    Returns:
        ``(aucs [K], v10 [K, m], v01 [K, n])``: ``v10`` per positive, ``v01`` per negative.
    """
    positives = scores[:, labels]
    negatives = scores[:, ~labels]
    m, n = positives.shape[1], negatives.shape[1]
    rank_pos = rankdata(positives, axis=1)
    rank_neg = rankdata(negatives, axis=1)
    rank_all = rankdata(np.concatenate([positives, negatives], axis=1), axis=1)
    aucs = (rank_all[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v10 = (rank_all[:, :m] - rank_pos) / n
    v01 = 1.0 - (rank_all[:, m:] - rank_neg) / m
    return aucs, v10, v01


def _stack_scores(y_true: ArrayLike, y_scores: Sequence[ArrayLike] | np.ndarray):
    if isinstance(y_scores, np.ndarray):
        rows = [y_scores] if y_scores.ndim == 1 else list(y_scores)
    else:
        rows = list(y_scores)
        if rows and np.ndim(rows[0]) == 0:
            rows = [rows]
    if not rows:
        raise InputError(None, "no score vectors given")
    labels = None
    cleaned = []
    for k, row in enumerate(rows):
        labels, row_clean = as_binary(y_true, row, score_name=f"scores[{k}]")
        cleaned.append(row_clean)
    return labels, np.stack(cleaned)


def delong_covariance(
    y_true: ArrayLike, y_scores: Sequence[ArrayLike] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs of ``K`` scorers on the same cases and DeLong's covariance matrix.

    Args:
        y_true: Labels ``[N]``: 1, 0, NaN (NaN rows dropped for every scorer).
        y_scores: ``K`` score vectors of length ``N`` (a ``[K, N]`` array, a list of
            arrays, or one ``[N]`` vector for ``K = 1``).

    Returns:
        ``(aucs [K], cov [K, K])``. Both are NaN (with a warning) when a class is absent;
        ``cov`` is NaN (with a warning) when there are fewer than 2 positives or negatives.
    """
    labels, scores = _stack_scores(y_true, y_scores)
    n_scorers = scores.shape[0]
    m = int(labels.sum())
    n = labels.size - m
    if m == 0 or n == 0:
        warnings.warn(
            f"AUROC is undefined with {m} positive(s) and {n} negative(s); returning NaN",
            stacklevel=2,
        )
        return np.full(n_scorers, np.nan), np.full((n_scorers, n_scorers), np.nan)
    aucs, v10, v01 = structural_components(labels, scores)
    if m < 2 or n < 2:
        warnings.warn(
            f"DeLong variance needs at least 2 positives and 2 negatives, got {m} and {n}; "
            "returning NaN covariance",
            stacklevel=2,
        )
        return aucs, np.full((n_scorers, n_scorers), np.nan)
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def delong_ci(y_true: ArrayLike, y_score: ArrayLike, alpha: float = 0.95) -> tuple[float, float, float]:
    """AUROC with DeLong's confidence interval.

    The interval is ``AUC +/- z * sqrt(Var_DeLong)`` with ``z`` the two-sided normal
    quantile for ``alpha``, clipped to ``[0, 1]`` (plain normal interval, not logit).

    Args:
        y_true: Labels ``[N]``: 1, 0, NaN (dropped).
        y_score: Scores ``[N]``.
        alpha: Confidence level, e.g. 0.95 for a 95 % interval.

    Returns:
        ``(auc, low, high)``; all NaN (with a warning) when a class is absent, and
        ``low``/``high`` NaN when there are fewer than 2 positives or negatives.

    Example:
        >>> auc, low, high = delong_ci([0, 0, 1, 1, 0, 1], [.1, .4, .35, .8, .2, .9])
        >>> round(auc, 4)
        0.8889
    """
    z = NormalDist().inv_cdf(0.5 + check_confidence(alpha) / 2.0)
    aucs, cov = delong_covariance(y_true, [y_score])
    auc, var = float(aucs[0]), float(cov[0, 0])
    if not np.isfinite(var):
        return auc, float("nan"), float("nan")
    half = z * np.sqrt(max(var, 0.0))
    return auc, float(max(0.0, auc - half)), float(min(1.0, auc + half))


def delong_paired_test(
    y_true: ArrayLike, score_a: ArrayLike, score_b: ArrayLike
) -> tuple[float, float, float, float]:
    """Two-sided DeLong test of equal AUROC for two scorers on the same cases.

    ``z = (AUC_a - AUC_b) / sqrt(Var_a + Var_b - 2 Cov_ab)``; ``p = 2 * (1 - Phi(|z|))``.
    When the variance of the difference is zero (e.g. identical scores) the test is
    degenerate: equal AUCs give ``z = 0, p = 1``; different AUCs give ``z = +/-inf, p = 0``.

    Args:
        y_true: Labels ``[N]``: 1, 0, NaN (rows dropped for both scorers).
        score_a: Scores of the first model ``[N]``.
        score_b: Scores of the second model ``[N]``.

    Returns:
        ``(auc_a, auc_b, z, p_value)``; NaN where undefined (one class, or fewer than
        2 positives or negatives), with a warning.
    """
    aucs, cov = delong_covariance(y_true, [score_a, score_b])
    auc_a, auc_b = float(aucs[0]), float(aucs[1])
    var_diff = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    if not np.isfinite(var_diff):
        return auc_a, auc_b, float("nan"), float("nan")
    diff = auc_a - auc_b
    scale = max(float(cov[0, 0] + cov[1, 1]), np.finfo(float).tiny)
    if var_diff <= 1e-12 * scale:
        if abs(diff) <= 1e-12:
            return auc_a, auc_b, 0.0, 1.0
        return auc_a, auc_b, float(np.sign(diff) * np.inf), 0.0
    z = diff / np.sqrt(var_diff)
    return auc_a, auc_b, float(z), float(math.erfc(abs(z) / math.sqrt(2.0)))
