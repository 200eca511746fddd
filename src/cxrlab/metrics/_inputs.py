"""Input checks shared by the classification, DeLong and calibration metrics.

Every binary metric accepts labels in ``{0, 1}`` with NaN for "unknown" (the cxrlab label
contract) and finite scores. Rows whose label is NaN are dropped before scoring; anything
else that is not 0/1 is a :class:`~cxrlab.errors.LabelValueError`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from cxrlab.errors import InputError, LabelValueError


def _first_indices(mask: np.ndarray, limit: int = 5) -> str:
    idx = np.flatnonzero(mask)[:limit]
    more = ", ..." if int(mask.sum()) > limit else ""
    return ", ".join(str(int(i)) for i in idx) + more


def as_binary(
    y_true: ArrayLike, y_score: ArrayLike, *, score_name: str = "y_score"
) -> tuple[np.ndarray, np.ndarray]:
    """Check a binary problem and drop the rows whose label is unknown.

    Args:
        y_true: Labels, shape ``[N]``: 1 positive, 0 negative, NaN unknown (dropped).
        y_score: Scores, shape ``[N]``; higher means more likely positive. Must be finite
            where the label is known.
        score_name: Name of the score argument, used in error messages.

    Returns:
        ``(labels, scores)``: labels as ``bool [M]`` and scores as ``float64 [M]``, with
        ``M`` the number of rows whose label is known.

    Raises:
        InputError: Shapes differ, are not 1-D, or a score is NaN/inf.
        LabelValueError: A label is neither 0, 1 nor NaN.
    """
    labels = np.asarray(y_true, dtype=np.float64)
    scores = np.asarray(y_score, dtype=np.float64)
    if labels.ndim != 1 or scores.ndim != 1:
        raise InputError(
            None,
            f"y_true and {score_name} must be 1-D, got shapes {labels.shape} and {scores.shape}",
        )
    if labels.shape != scores.shape:
        raise InputError(
            None,
            f"y_true has {labels.shape[0]} values but {score_name} has {scores.shape[0]}",
        )
    known = ~np.isnan(labels)
    labels, scores = labels[known], scores[known]
    bad = (labels != 0) & (labels != 1)
    if bad.any():
        values = ", ".join(f"{v:g}" for v in np.unique(labels[bad])[:5])
        raise LabelValueError(
            None,
            f"y_true must hold 0/1 (NaN = unknown); found {values} at known-label position(s) "
            f"{_first_indices(bad)} (map uncertain -1 labels with a label policy first)",
        )
    nonfinite = ~np.isfinite(scores)
    if nonfinite.any():
        raise InputError(
            None,
            f"{score_name} holds {int(nonfinite.sum())} NaN/inf value(s) where the label is known "
            f"(known-label position(s) {_first_indices(nonfinite)})",
        )
    return labels.astype(bool), scores


def as_probabilities(y_true: ArrayLike, y_prob: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`as_binary`, and also require ``y_prob`` in ``[0, 1]``.

    Raises:
        InputError: As :func:`as_binary`, or a probability lies outside ``[0, 1]``.
        LabelValueError: A label is neither 0, 1 nor NaN.
    """
    labels, probs = as_binary(y_true, y_prob, score_name="y_prob")
    outside = (probs < 0) | (probs > 1)
    if outside.any():
        raise InputError(
            None,
            f"y_prob must be probabilities in [0, 1]; {int(outside.sum())} value(s) lie outside "
            f"(range {probs.min():g} to {probs.max():g}); apply a sigmoid to logits first",
        )
    return labels, probs


def as_multilabel(
    y_true: ArrayLike, y_score: ArrayLike, class_names: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Check ``[N, C]`` labels and scores (NaN labels kept) and name the classes.

    Args:
        y_true: Labels ``[N, C]`` (or ``[N]`` for one class); 1, 0 or NaN.
        y_score: Scores of the same shape.
        class_names: ``C`` names; ``None`` names them ``"0"``, ``"1"``, ...

    Returns:
        ``(labels float64 [N, C], scores float64 [N, C], names)``.

    Raises:
        InputError: Shapes differ or the number of names is not ``C``.
    """
    labels = np.asarray(y_true, dtype=np.float64)
    scores = np.asarray(y_score, dtype=np.float64)
    if labels.ndim == 1:
        labels = labels[:, None]
    if scores.ndim == 1:
        scores = scores[:, None]
    if labels.ndim != 2 or labels.shape != scores.shape:
        raise InputError(
            None,
            f"y_true and y_score must both be [N, C] with the same shape, got "
            f"{np.shape(y_true)} and {np.shape(y_score)}",
        )
    names = [str(i) for i in range(labels.shape[1])] if class_names is None else list(class_names)
    if len(names) != labels.shape[1]:
        raise InputError(
            None, f"got {len(names)} class names for {labels.shape[1]} label columns: {names}"
        )
    return labels, scores, names


def check_confidence(alpha: float) -> float:
    """Return ``alpha`` if it is a valid confidence level in ``(0, 1)``.

    Raises:
        InputError: ``alpha`` is outside ``(0, 1)``.
    """
    if not 0.0 < alpha < 1.0:
        raise InputError(None, f"alpha is the confidence level and must be in (0, 1), got {alpha}")
    return float(alpha)
