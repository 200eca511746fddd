"""Binary and multi-label classification metrics as pure numpy functions.

Conventions shared by every function here:

- Labels are 1 (positive), 0 (negative) or NaN (unknown); rows with a NaN label are
  dropped per class before scoring. Any other label value raises
  :class:`~cxrlab.errors.LabelValueError`.
- Scores are finite; higher means more likely positive. A case is predicted positive
  when ``score >= threshold`` (the convention of :func:`sklearn.metrics.roc_curve`).
- A metric that needs both classes returns NaN with a ``warnings.warn`` when one is
  absent (never a silent -1 or 0.5).
- Rates with a zero denominator (e.g. PPV with no predicted positive) are NaN, as with
  scikit-learn's ``zero_division=np.nan``.

DeLong's interval and test live in :mod:`cxrlab.metrics.delong`, calibration in
:mod:`cxrlab.metrics.calibration`; both are re-exported here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from cxrlab.errors import InputError
from cxrlab.metrics._inputs import as_binary, as_multilabel, check_confidence
from cxrlab.metrics.calibration import expected_calibration_error, reliability_curve
from cxrlab.metrics.delong import delong_ci, delong_covariance, delong_paired_test, rankdata

__all__ = [
    "auroc",
    "multilabel_auroc",
    "roc_curve",
    "pr_curve",
    "average_precision",
    "threshold_metrics",
    "youden_threshold",
    "threshold_at_sensitivity",
    "bootstrap_ci",
    "binary_summary",
    "per_class_report",
    "study_level",
    "delong_ci",
    "delong_covariance",
    "delong_paired_test",
    "expected_calibration_error",
    "reliability_curve",
]

_BOOTSTRAP_CHUNK_ELEMENTS = 4_000_000  # resampled values held in memory at once


def _warn_one_class(n_pos: int, n_neg: int, what: str, name: str | None = None) -> None:
    where = f" for class {name!r}" if name is not None else ""
    warnings.warn(
        f"{what} is undefined{where}: {n_pos} positive(s) and {n_neg} negative(s) "
        "among the known labels; returning NaN",
        stacklevel=3,
    )


def _auroc_rows(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC of each row of ``[B, N]`` arrays; NaN for one-class rows."""
    ranks = rankdata(scores, axis=-1)
    n_pos = labels.sum(axis=-1, dtype=np.float64)
    n_neg = labels.shape[-1] - n_pos
    rank_sum = np.where(labels, ranks, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def auroc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Area under the ROC curve from midranks (Mann-Whitney U / (n_pos * n_neg)).

    Equals :func:`sklearn.metrics.roc_auc_score`; tied scores count one half.

    Args:
        y_true: Labels ``[N]``: 1, 0, NaN (dropped).
        y_score: Scores ``[N]``.

    Returns:
        The AUROC, or NaN with a warning when only one class is present.

    Example:
        >>> auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
        0.75
    """
    labels, scores = as_binary(y_true, y_score)
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.size:
        _warn_one_class(n_pos, labels.size - n_pos, "AUROC")
        return float("nan")
    return float(_auroc_rows(labels, scores))


def multilabel_auroc(
    y_true: ArrayLike, y_score: ArrayLike, class_names: Sequence[str] | None = None
) -> np.ndarray:
    """AUROC of each column of ``[N, C]`` labels and scores, NaN labels ignored per class.

    Returns:
        ``float [C]``; NaN (with a warning naming the class) where a class is one-sided.
    """
    labels, scores, names = as_multilabel(y_true, y_score, class_names)
    out = np.full(labels.shape[1], np.nan)
    for c, name in enumerate(names):
        lab, sco = as_binary(labels[:, c], scores[:, c], score_name=f"y_score[:, {c}]")
        n_pos = int(lab.sum())
        if n_pos == 0 or n_pos == lab.size:
            _warn_one_class(n_pos, lab.size - n_pos, "AUROC", name)
            continue
        out[c] = float(_auroc_rows(lab, sco))
    return out


def _clf_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False/true positive counts at each distinct score, scores in decreasing order."""
    order = np.argsort(scores, kind="mergesort")[::-1]
    scores, labels = scores[order], labels[order]
    ends = np.r_[np.flatnonzero(np.diff(scores)), labels.size - 1]
    tps = np.cumsum(labels, dtype=np.float64)[ends]
    fps = 1.0 + ends - tps
    return fps, tps, scores[ends]


def roc_curve(
    y_true: ArrayLike, y_score: ArrayLike, drop_intermediate: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve, identical to :func:`sklearn.metrics.roc_curve`.

    Args:
        y_true: Labels ``[N]``: 1, 0, NaN (dropped).
        y_score: Scores ``[N]``.
        drop_intermediate: Drop collinear points that do not change the curve.

    Returns:
        ``(fpr, tpr, thresholds)`` with ``thresholds`` decreasing and ``thresholds[0] =
        inf`` (the point (0, 0)). A rate whose class is absent is NaN (with a warning).
    """
    labels, scores = as_binary(y_true, y_score)
    if labels.size == 0:
        raise InputError(None, "roc_curve needs at least one labelled case, got none")
    fps, tps, thresholds = _clf_curve(labels, scores)
    if drop_intermediate and fps.size > 2:
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
    thresholds = np.r_[np.inf, thresholds]
    if fps[-1] <= 0 or tps[-1] <= 0:
        _warn_one_class(int(tps[-1]), int(fps[-1]), "ROC curve")
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, np.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
    return fpr, tpr, thresholds


def pr_curve(
    y_true: ArrayLike, y_score: ArrayLike, drop_intermediate: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall curve, identical to :func:`sklearn.metrics.precision_recall_curve`.

    Args:
        y_true: Labels ``[N]``: 1, 0, NaN (dropped).
        y_score: Scores ``[N]``.
        drop_intermediate: Keep only the first and last point of each recall level.

    Returns:
        ``(precision, recall, thresholds)`` with recall decreasing; the last point is
        ``(precision 1, recall 0)`` and has no threshold. With no positive the recall is
        1 everywhere (with a warning), as in scikit-learn.
    """
    labels, scores = as_binary(y_true, y_score)
    if labels.size == 0:
        raise InputError(None, "pr_curve needs at least one labelled case, got none")
    fps, tps, thresholds = _clf_curve(labels, scores)
    if drop_intermediate and fps.size > 2:
        keep = np.r_[True, np.logical_or(np.diff(tps[:-1]), np.diff(tps[1:])), True]
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    predicted = tps + fps
    precision = np.divide(tps, predicted, out=np.zeros_like(tps), where=predicted != 0)
    if tps[-1] == 0:
        _warn_one_class(0, int(fps[-1]), "Recall")
        recall = np.ones_like(tps)
    else:
        recall = tps / tps[-1]
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thresholds[::-1]


def average_precision(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Average precision (step integral of the PR curve), as sklearn's ``average_precision_score``.

    Returns:
        AP in ``[0, 1]``, or NaN with a warning when there is no positive.
    """
    labels, scores = as_binary(y_true, y_score)
    if not labels.any():
        _warn_one_class(0, labels.size, "Average precision")
        return float("nan")
    precision, recall, _ = pr_curve(labels, scores)
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def _counts_to_metrics(tp: int, fp: int, tn: int, fn: int) -> dict[str, float | int]:
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def _metrics_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float | int]:
    predicted = scores >= threshold
    tp = int(np.count_nonzero(predicted & labels))
    fp = int(np.count_nonzero(predicted & ~labels))
    fn = int(np.count_nonzero(~predicted & labels))
    tn = int(labels.size - tp - fp - fn)
    return _counts_to_metrics(tp, fp, tn, fn)


def threshold_metrics(
    y_true: ArrayLike, y_score: ArrayLike, threshold: float
) -> dict[str, float | int]:
    """Confusion counts and rates when ``score >= threshold`` is called positive.

    Args:
        y_true: Labels ``[N]``: 1, 0, NaN (dropped).
        y_score: Scores ``[N]``.
        threshold: Decision threshold.

    Returns:
        ``{"sensitivity", "specificity", "ppv", "npv", "f1"}`` as floats (NaN where the
        denominator is 0) and ``{"tp", "fp", "tn", "fn"}`` as ints.
    """
    if math.isnan(threshold):
        raise InputError(None, "threshold is NaN")
    labels, scores = as_binary(y_true, y_score)
    return _metrics_at(labels, scores, threshold)


def youden_threshold(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Threshold maximizing Youden's J = sensitivity + specificity - 1.

    The candidates are the distinct scores (the finite ROC thresholds); among equal J the
    highest threshold wins.

    Returns:
        The threshold (a score value), or NaN with a warning when a class is absent.
    """
    labels, scores = as_binary(y_true, y_score)
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.size:
        _warn_one_class(n_pos, labels.size - n_pos, "Youden's threshold")
        return float("nan")
    fps, tps, thresholds = _clf_curve(labels, scores)
    youden_j = tps / n_pos - fps / (labels.size - n_pos)
    return float(thresholds[int(np.argmax(youden_j))])


def threshold_at_sensitivity(y_true: ArrayLike, y_score: ArrayLike, target: float) -> float:
    """Highest threshold whose sensitivity (``score >= threshold``) reaches ``target``.

    Args:
        y_true: Labels ``[N]``: 1, 0, NaN (dropped).
        y_score: Scores ``[N]``.
        target: Wanted sensitivity in ``(0, 1]``.

    Returns:
        The ``ceil(target * n_pos)``-th highest positive score, or NaN with a warning
        when there is no positive.
    """
    if not 0.0 < target <= 1.0:
        raise InputError(None, f"target sensitivity must be in (0, 1], got {target}")
    labels, scores = as_binary(y_true, y_score)
    positives = scores[labels]
    if positives.size == 0:
        _warn_one_class(0, labels.size, "Threshold at sensitivity")
        return float("nan")
    needed = min(positives.size, max(1, math.ceil(target * positives.size - 1e-9)))
    # the needed-th largest positive score
    return float(np.partition(positives, positives.size - needed)[positives.size - needed])


def bootstrap_ci(
    y_true: ArrayLike,
    y_score: ArrayLike,
    metric: Callable[[np.ndarray, np.ndarray], float] = auroc,
    n_boot: int = 1000,
    alpha: float = 0.95,
    seed: int | np.random.Generator | None = 0,
    stratified: bool = True,
) -> tuple[float, float, float]:
    """Percentile bootstrap confidence interval of a metric.

    Resamples cases with replacement. ``stratified=True`` resamples positives and
    negatives separately, keeping their counts (so no replicate lacks a class). For
    ``metric=auroc`` all replicates are scored at once (batched midranks, in chunks of
    bounded memory); other metrics are called once per replicate. Replicates where the
    metric is NaN are left out of the percentiles.

    Args:
        y_true: Labels ``[N]``: 1, 0, NaN (dropped).
        y_score: Scores ``[N]``.
        metric: ``metric(y_true, y_score) -> float`` on cleaned 1-D arrays.
        n_boot: Number of replicates.
        alpha: Confidence level (0.95 gives the 2.5th and 97.5th percentiles).
        seed: Seed or generator of the resampling (a local generator; global state is
            untouched).
        stratified: Resample within each class.

    Returns:
        ``(estimate, low, high)`` where ``estimate`` is the metric on all cases.
    """
    check_confidence(alpha)
    if n_boot < 1:
        raise InputError(None, f"n_boot must be at least 1, got {n_boot}")
    labels, scores = as_binary(y_true, y_score)
    estimate = float(metric(labels, scores))
    n = labels.size
    if n == 0:
        return estimate, float("nan"), float("nan")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    groups = [np.flatnonzero(labels), np.flatnonzero(~labels)] if stratified else [np.arange(n)]
    groups = [g for g in groups if g.size]
    chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // n)
    values = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        index = np.concatenate([g[rng.integers(0, g.size, size=(rows, g.size))] for g in groups], axis=1)
        if metric is auroc:
            values[start : start + rows] = _auroc_rows(labels[index], scores[index])
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                values[start : start + rows] = [metric(labels[i], scores[i]) for i in index]
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return estimate, float("nan"), float("nan")
    tail = (1.0 - alpha) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    return estimate, float(low), float(high)


def binary_summary(y_true: ArrayLike, y_score: ArrayLike, alpha: float = 0.95) -> dict[str, Any]:
    """AUROC with DeLong CI, counts, and sensitivity/specificity at Youden's threshold.

    Returns:
        ``{"auroc", "auroc_ci_low", "auroc_ci_high", "n", "n_positive", "threshold",
        "sensitivity", "specificity"}``; NaN entries (with warnings) when a class is
        absent. This is what ``cxrlab metrics classification`` prints.
    """
    labels, scores = as_binary(y_true, y_score)
    auc, low, high = delong_ci(labels, scores, alpha=alpha)
    threshold = youden_threshold(labels, scores)
    at = _nan_metrics() if math.isnan(threshold) else _metrics_at(labels, scores, threshold)
    return {
        "auroc": auc,
        "auroc_ci_low": low,
        "auroc_ci_high": high,
        "n": int(labels.size),
        "n_positive": int(labels.sum()),
        "threshold": threshold,
        "sensitivity": at["sensitivity"],
        "specificity": at["specificity"],
    }


def _nan_metrics() -> dict[str, float]:
    keys = ("sensitivity", "specificity", "ppv", "npv", "f1", "tp", "fp", "tn", "fn")
    return dict.fromkeys(keys, float("nan"))


def _operating_point(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    at = _nan_metrics() if math.isnan(threshold) else _metrics_at(labels, scores, threshold)
    return {"threshold": float(threshold), **at}


def per_class_report(
    y_true: ArrayLike,
    y_score: ArrayLike,
    class_names: Sequence[str] | None = None,
    *,
    sensitivity_target: float = 0.9,
    alpha: float = 0.95,
    n_bins: int = 10,
) -> dict[str, dict[str, Any]]:
    """Per-class evaluation of multi-label probabilities, NaN labels ignored per class.

    Args:
        y_true: Labels ``[N, C]``: 1, 0, NaN.
        y_score: Predicted probabilities ``[N, C]`` (ECE and the 0.5 operating point
            assume probabilities; ECE is NaN when a score lies outside ``[0, 1]``).
        class_names: ``C`` names (default ``"0"``, ``"1"``, ...).
        sensitivity_target: Sensitivity of the fixed-sensitivity operating point.
        alpha: Confidence level of the DeLong interval.
        n_bins: Bins of the expected calibration error.

    Returns:
        ``{class: {"n", "n_positive", "auroc", "auroc_ci_low", "auroc_ci_high",
        "average_precision", "ece", "at_0.5", "at_youden", "at_sensitivity"}}`` where each
        ``at_*`` entry is :func:`threshold_metrics` plus ``"threshold"`` (and
        ``"target_sensitivity"`` for ``at_sensitivity``). Classes with one label value get
        NaN for what needs both (one warning per class).
    """
    labels_all, scores_all, names = as_multilabel(y_true, y_score, class_names)
    if not 0.0 < sensitivity_target <= 1.0:
        raise InputError(None, f"sensitivity_target must be in (0, 1], got {sensitivity_target}")
    report: dict[str, dict[str, Any]] = {}
    for c, name in enumerate(names):
        labels, scores = as_binary(labels_all[:, c], scores_all[:, c], score_name=f"y_score[:, {c}]")
        n_pos = int(labels.sum())
        two_classes = 0 < n_pos < labels.size
        if not two_classes:
            _warn_one_class(n_pos, labels.size - n_pos, "AUROC", name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            auc, low, high = delong_ci(labels, scores, alpha=alpha)
            youden = youden_threshold(labels, scores)
            at_sens = (
                threshold_at_sensitivity(labels, scores, sensitivity_target) if n_pos else float("nan")
            )
            is_prob = labels.size > 0 and scores.min() >= 0.0 and scores.max() <= 1.0
            ece = expected_calibration_error(labels, scores, n_bins=n_bins) if is_prob else float("nan")
            ap = average_precision(labels, scores) if n_pos else float("nan")
        report[name] = {
            "n": int(labels.size),
            "n_positive": n_pos,
            "auroc": auc,
            "auroc_ci_low": low,
            "auroc_ci_high": high,
            "average_precision": ap,
            "ece": ece,
            "at_0.5": _operating_point(labels, scores, 0.5),
            "at_youden": _operating_point(labels, scores, youden),
            "at_sensitivity": {
                "target_sensitivity": float(sensitivity_target),
                **_operating_point(labels, scores, at_sens),
            },
        }
    return report


def study_level(
    study_ids: ArrayLike, y_true: ArrayLike, y_score: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Aggregate image-level labels and scores to studies by their maximum.

    NaN is ignored by the maximum (a study's label is NaN only when all its images are
    NaN for that class), so a positive view makes the study positive.

    Args:
        study_ids: Study identifier of each image ``[N]`` (str or int; no missing ids).
        y_true: Labels ``[N]`` or ``[N, C]``.
        y_score: Scores of the same shape.

    Returns:
        ``(unique_study_ids [S], labels [S(, C)], scores [S(, C)])``, studies in order of
        first appearance.
    """
    ids = np.asarray(study_ids, dtype=object)
    labels = np.asarray(y_true, dtype=np.float64)
    scores = np.asarray(y_score, dtype=np.float64)
    if ids.ndim != 1 or labels.shape != scores.shape or labels.shape[:1] != ids.shape:
        raise InputError(
            None,
            f"study_ids [N], y_true and y_score must agree in length and shape, got "
            f"{ids.shape}, {labels.shape} and {scores.shape}",
        )
    if ids.size == 0:
        return np.asarray([], dtype=object), labels.copy(), scores.copy()
    codes, uniques = pd.factorize(ids, sort=False)
    if (codes < 0).any():
        raise InputError(None, f"study_ids has {int((codes < 0).sum())} missing value(s)")
    order = np.argsort(codes, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(codes[order]) != 0])
    study_labels = np.fmax.reduceat(labels[order], starts, axis=0)
    study_scores = np.fmax.reduceat(scores[order], starts, axis=0)
    return np.asarray(uniques), study_labels, study_scores
