"""ROC, precision-recall and reliability figures (PNG) with their data (JSON).

Figures are drawn on :class:`matplotlib.figure.Figure` with the Agg canvas directly, so
nothing touches pyplot's global state or needs a display. Every file is written
atomically (temporary file in the same folder, then ``os.replace``).

``curves.json`` layout (non-finite numbers, such as the first ROC threshold ``inf``, are
written as ``null``)::

    {"classes": {"<name>": {
        "n": int, "n_positive": int, "auroc": float|null, "average_precision": float|null,
        "roc": {"fpr": [...], "tpr": [...], "thresholds": [...]} | null,
        "pr": {"precision": [...], "recall": [...], "thresholds": [...]} | null,
        "reliability": {"fraction_positive": [...], "mean_predicted": [...],
                        "counts": [...]} | null}}}

``roc`` and ``pr`` are null for a class with one label value only; ``reliability`` is
null when the scores are not probabilities in ``[0, 1]``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from cxrlab.metrics._inputs import as_binary, as_multilabel
from cxrlab.metrics.calibration import reliability_curve
from cxrlab.metrics.classification import auroc, average_precision, pr_curve, roc_curve


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _jsonable(values: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in np.asarray(values, dtype=np.float64)]


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def class_curves(y_true: ArrayLike, y_score: ArrayLike, n_bins: int = 10) -> dict[str, Any]:
    """Curve data of one class as plain lists (the per-class entry of ``curves.json``).

    Args:
        y_true: Labels ``[N]``: 1, 0, NaN (dropped).
        y_score: Scores ``[N]``.
        n_bins: Bins of the reliability curve.

    Returns:
        A JSON-ready dict as described in the module docstring.
    """
    labels, scores = as_binary(y_true, y_score)
    n_pos = int(labels.sum())
    entry: dict[str, Any] = {
        "n": int(labels.size),
        "n_positive": n_pos,
        "auroc": None,
        "average_precision": None,
        "roc": None,
        "pr": None,
        "reliability": None,
    }
    if 0 < n_pos < labels.size:
        fpr, tpr, roc_thr = roc_curve(labels, scores, drop_intermediate=True)
        precision, recall, pr_thr = pr_curve(labels, scores, drop_intermediate=True)
        entry["auroc"] = _finite_or_none(auroc(labels, scores))
        entry["average_precision"] = _finite_or_none(average_precision(labels, scores))
        entry["roc"] = {"fpr": _jsonable(fpr), "tpr": _jsonable(tpr), "thresholds": _jsonable(roc_thr)}
        entry["pr"] = {
            "precision": _jsonable(precision),
            "recall": _jsonable(recall),
            "thresholds": _jsonable(pr_thr),
        }
    if labels.size and scores.min() >= 0.0 and scores.max() <= 1.0:
        frac_pos, mean_pred, counts = reliability_curve(labels, scores, n_bins=n_bins)
        entry["reliability"] = {
            "fraction_positive": _jsonable(frac_pos),
            "mean_predicted": _jsonable(mean_pred),
            "counts": [int(c) for c in counts],
        }
    return entry


def _figure(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Any]:
    fig = Figure(figsize=(6.0, 6.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save_figure(fig: Figure, ax: Any, path: Path, has_lines: bool) -> None:
    if has_lines:
        ax.legend(loc="best", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no class with both labels", ha="center", va="center")
    fig.tight_layout()
    _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def _plot_all(curves: dict[str, dict[str, Any]], out: Path) -> None:
    fig, ax = _figure("ROC", "1 - specificity (FPR)", "sensitivity (TPR)")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    drawn = False
    for name, entry in curves.items():
        if entry["roc"] is not None:
            ax.plot(entry["roc"]["fpr"], entry["roc"]["tpr"], label=f"{name} (AUC {entry['auroc']:.3f})")
            drawn = True
    _save_figure(fig, ax, out / "roc.png", drawn)

    fig, ax = _figure("Precision-recall", "recall (sensitivity)", "precision (PPV)")
    drawn = False
    for name, entry in curves.items():
        if entry["pr"] is not None:
            ax.step(
                entry["pr"]["recall"],
                entry["pr"]["precision"],
                where="post",
                label=f"{name} (AP {entry['average_precision']:.3f})",
            )
            drawn = True
    _save_figure(fig, ax, out / "pr.png", drawn)

    fig, ax = _figure("Reliability", "mean predicted probability", "fraction of positives")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    drawn = False
    for name, entry in curves.items():
        if entry["reliability"] is not None:
            rel = entry["reliability"]
            ax.plot(rel["mean_predicted"], rel["fraction_positive"], marker="o", label=name)
            drawn = True
    _save_figure(fig, ax, out / "reliability.png", drawn)


def save_roc_pr_curves(
    y_true: ArrayLike,
    y_score: ArrayLike,
    class_names: Sequence[str] | None,
    out_dir: str | Path,
    n_bins: int = 10,
) -> dict[str, Path]:
    """Write ``roc.png``, ``pr.png``, ``reliability.png`` and ``curves.json`` to ``out_dir``.

    Args:
        y_true: Labels ``[N]`` or ``[N, C]``: 1, 0, NaN (ignored per class).
        y_score: Scores of the same shape (probabilities for the reliability diagram).
        class_names: ``C`` names (default ``"0"``, ``"1"``, ...).
        out_dir: Folder to write into (created if missing).
        n_bins: Bins of the reliability curves.

    Returns:
        ``{"roc", "pr", "reliability", "json"}`` mapped to the written paths.
    """
    labels, scores, names = as_multilabel(y_true, y_score, class_names)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    curves: dict[str, dict[str, Any]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one-class columns are recorded as null curves
        for c, name in enumerate(names):
            curves[name] = class_curves(labels[:, c], scores[:, c], n_bins=n_bins)
    _plot_all(curves, out)
    text = json.dumps({"classes": curves}, allow_nan=False)
    _atomic_write(out / "curves.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return {
        "roc": out / "roc.png",
        "pr": out / "pr.png",
        "reliability": out / "reliability.png",
        "json": out / "curves.json",
    }
