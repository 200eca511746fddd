"""Calibration of predicted probabilities: reliability curve and expected calibration error.

Binning follows :func:`sklearn.calibration.calibration_curve`: with ``strategy="uniform"``
the edges are ``linspace(0, 1, n_bins + 1)``, with ``"quantile"`` they are the
percentiles of ``y_prob``; a probability equal to an inner edge falls in the lower bin.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from cxrlab.errors import InputError
from cxrlab.metrics._inputs import as_probabilities

STRATEGIES = ("uniform", "quantile")


def _bin_stats(
    labels: np.ndarray, probs: np.ndarray, n_bins: int, strategy: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if n_bins < 1:
        raise InputError(None, f"n_bins must be at least 1, got {n_bins}")
    if strategy not in STRATEGIES:
        raise InputError(None, f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if probs.size == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    else:
        edges = np.percentile(probs, np.linspace(0.0, 100.0, n_bins + 1))
    bin_ids = np.searchsorted(edges[1:-1], probs)
    prob_sum = np.bincount(bin_ids, weights=probs, minlength=n_bins)
    true_sum = np.bincount(bin_ids, weights=labels.astype(np.float64), minlength=n_bins)
    counts = np.bincount(bin_ids, minlength=n_bins)
    nonempty = counts > 0
    return (
        true_sum[nonempty] / counts[nonempty],
        prob_sum[nonempty] / counts[nonempty],
        counts[nonempty],
    )


def reliability_curve(
    y_true: ArrayLike, y_prob: ArrayLike, n_bins: int = 10, strategy: str = "uniform"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observed frequency of positives against mean predicted probability, per bin.

    Args:
        y_true: Labels ``[N]``: 1, 0, NaN (dropped).
        y_prob: Predicted probabilities ``[N]`` in ``[0, 1]``.
        n_bins: Number of bins.
        strategy: ``"uniform"`` (equal-width bins) or ``"quantile"`` (equal-count bins).

    Returns:
        ``(fraction_positive, mean_predicted, counts)`` over the non-empty bins, in
        increasing order of probability. The first two equal sklearn's
        ``calibration_curve(y_true, y_prob, n_bins=n_bins, strategy=strategy)``.
    """
    labels, probs = as_probabilities(y_true, y_prob)
    return _bin_stats(labels, probs, n_bins, strategy)


def expected_calibration_error(
    y_true: ArrayLike, y_prob: ArrayLike, n_bins: int = 10, strategy: str = "uniform"
) -> float:
    """Expected calibration error: ``sum_b (n_b / N) * |fraction_positive_b - mean_prob_b|``.

    Args:
        y_true: Labels ``[N]``: 1, 0, NaN (dropped).
        y_prob: Predicted probabilities ``[N]`` in ``[0, 1]``.
        n_bins: Number of bins.
        strategy: ``"uniform"`` or ``"quantile"``, as in :func:`reliability_curve`.

    Returns:
        The ECE in ``[0, 1]`` (0 is perfect calibration); NaN when no label is known.

    Example:
        >>> expected_calibration_error([0, 1, 1, 0], [0.0, 1.0, 1.0, 0.0])
        0.0
    """
    labels, probs = as_probabilities(y_true, y_prob)
    if labels.size == 0:
        return float("nan")
    frac_pos, mean_prob, counts = _bin_stats(labels, probs, n_bins, strategy)
    return float(np.sum(counts / labels.size * np.abs(frac_pos - mean_prob)))
