"""MRNet evaluation: per task, per plane and combined, on the held-out split.

AUROC with DeLong's 95 % interval; sensitivity, specificity and accuracy at the stored
threshold; ROC curves (``curves/roc_<task>_<model>.csv``); ``table.md`` in the paper's layout
(task x AUROC / sensitivity / specificity / accuracy) and ``metrics.json``; for the first
``cam_exams`` held-out exams, the class activation map of the slice that gave each network's
maximum (``cams/<exam>_<task>_<plane>.npz``: ``slice``, ``map`` (H, W) in [0, 1], ``probability``),
which the dashboard's MRNet page shows over the series.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrlab.config.mrnet import read_run_config
from cxrlab.data.datasets.mrnet import TASKS, ExamDataset
from cxrlab.explain.cam import heatmap
from cxrlab.inference.mrnet import MRNetPredictor
from cxrlab.metrics.classification import roc_curve, threshold_metrics
from cxrlab.metrics.delong import delong_ci
from cxrlab.tasks.mrnet.data import open_splits
from cxrlab.utils import atomic_write, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


def predict_dataset(predictor: Any, exams: ExamDataset) -> pd.DataFrame:
    """One row per exam: ``id``, the three labels, and ``<task>_<plane>`` (and ``<task>_combined``) probabilities."""
    rows = []
    for index, exam in enumerate(exams.exams):
        volumes = exams.volumes(index, tuple(predictor.planes))
        row: dict[str, Any] = {"id": exam.exam_id, **{t: exam.labels.get(t, math.nan) for t in TASKS}}
        for task, probs in predictor.predict(volumes).items():
            row.update({f"{task}_{model}": p for model, p in probs.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def predict_splits(run_dir: str | Path, splits: Any) -> dict[str, pd.DataFrame]:
    """Predict every split with the run's networks (no combination yet); writes ``predictions_<split>.csv``."""
    run_dir = Path(run_dir)
    predictor = MRNetPredictor.from_run_dir(run_dir, require_combine=False)
    out = {}
    for name, exams in splits.items():
        out[name] = predict_dataset(predictor, exams)
        _write_csv(out[name], run_dir / f"predictions_{name}.csv")
    return out


def score(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, float]:
    """AUROC (DeLong 95 % CI), sensitivity, specificity, accuracy at ``threshold``."""
    keep = ~np.isnan(labels)
    labels, probs = labels[keep], probs[keep]
    n_pos = int((labels == 1).sum())
    out: dict[str, float] = {"n": int(len(labels)), "positives": n_pos, "threshold": float(threshold)}
    if 0 < n_pos < len(labels):
        value, low, high = delong_ci(labels, probs)
        out.update(auroc=value, auroc_ci_low=low, auroc_ci_high=high)
    else:
        out.update(auroc=math.nan, auroc_ci_low=math.nan, auroc_ci_high=math.nan)
    counts = threshold_metrics(labels, probs, threshold) if len(labels) else {}
    out["sensitivity"] = counts.get("sensitivity", math.nan)
    out["specificity"] = counts.get("specificity", math.nan)
    correct = counts.get("tp", 0) + counts.get("tn", 0)
    out["accuracy"] = correct / len(labels) if len(labels) else math.nan
    return out


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def table_markdown(metrics: dict[str, Any]) -> str:
    """The paper's layout for the combined models, then every plane."""
    lines = ["| Task | AUROC (95% CI) | Sensitivity | Specificity | Accuracy |", "|---|---|---|---|---|"]
    per_plane = ["| Task | Model | AUROC (95% CI) | Sensitivity | Specificity | Accuracy |",
                 "|---|---|---|---|---|---|"]
    for task, models in metrics["tasks"].items():
        for model, s in models.items():
            cells = (f"{_fmt(s['auroc'])} ({_fmt(s['auroc_ci_low'])}-{_fmt(s['auroc_ci_high'])}) | "
                     f"{_fmt(s['sensitivity'])} | {_fmt(s['specificity'])} | {_fmt(s['accuracy'])}")
            if model == "combined":
                lines.append(f"| {task} | {cells} |")
            per_plane.append(f"| {task} | {model} | {cells} |")
    head = (f"MRNet on {metrics['split']} ({metrics['exams']} exams); operating threshold: "
            f"{metrics.get('operating_point', metrics['threshold'])}; "
            "combined = logistic regression over the planes fitted on the training exams.\n\n")
    return head + "\n".join(lines) + "\n\nPer network:\n\n" + "\n".join(per_plane) + "\n"


def top_slice_cam(predictor: Any, volumes: Any, task: str, plane: str, method: str = "gradcam") -> tuple[int, Any]:
    """The class activation map of the slice that gave the network's maximum (cxrlab's CAM code).

    Returns:
        ``(slice index, Heatmap)``; the map has the network's input size.
    """
    top, x = predictor.top_slice(volumes, task, plane)
    net = predictor.nets[(task, plane)][0]
    return top, heatmap(net.slice_model(), x[top], target=0, method=method, labels=[task], with_png=False)


def write_cams(run_dir: str | Path, predictor: Any, exams: ExamDataset, count: int) -> list[Path]:
    """``cams/<exam>_<task>_<plane>.npz`` for the first ``count`` exams of ``exams`` (every network)."""
    written = []
    for index in range(min(count, len(exams))):
        volumes = exams.volumes(index, tuple(predictor.planes))
        for task, plane in predictor.nets:
            top, cam = top_slice_cam(predictor, volumes, task, plane)
            path = Path(run_dir) / "cams" / f"{exams.ids[index]}_{task}_{plane}.npz"

            def save(tmp: Path, top: int = top, cam: Any = cam) -> None:
                with open(tmp, "wb") as handle:
                    np.savez_compressed(handle, slice=np.int64(top), map=cam.map.astype(np.float32),
                                        probability=np.float64(cam.probability))
            atomic_write(path, save)
            written.append(path)
    return written


def evaluate_run(run_dir: str | Path, predictions: pd.DataFrame | None = None, cam_exams: int = 4) -> dict[str, Any]:
    """Score the held-out ``valid`` exams; writes ``metrics.json``, ``table.md``, ``curves/`` and
    ``predictions_valid.csv`` (with the combined probabilities).

    Args:
        run_dir: A trained run (with ``combine.json``).
        predictions: The valid exams' per-plane predictions; default: predicted now.
        cam_exams: Held-out exams whose top-slice CAMs are written (``cams/``).
    """
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    predictor = MRNetPredictor.from_run_dir(run_dir)
    valid = open_splits(cfg).valid
    if predictions is None:
        predictions = predict_dataset(predictor, valid)
    write_cams(run_dir, predictor, valid, cam_exams)
    predictions = predictions.copy()
    for task in cfg.tasks:
        predictions[f"{task}_combined"] = [
            predictor.combined(task, {p: row[f"{task}_{p}"] for p in cfg.planes}) for _, row in predictions.iterrows()]
    _write_csv(predictions, run_dir / "predictions_valid.csv")
    metrics: dict[str, Any] = {"split": "valid", "exams": int(len(predictions)), "threshold": cfg.threshold,
                               "operating_point": f"fixed {cfg.threshold}" if cfg.operating_point == "fixed" else
                               "Youden's on the tune exams (per task and model)", "tasks": {}}
    for task in cfg.tasks:
        labels = predictions[task].to_numpy(dtype=float)
        metrics["tasks"][task] = {}
        for model in [*cfg.planes, "combined"]:
            probs = predictions[f"{task}_{model}"].to_numpy(dtype=float)
            threshold = predictor.threshold(task, model)
            metrics["tasks"][task][model] = score(labels, probs, threshold)
            keep = ~np.isnan(labels)
            if 0 < np.nansum(labels) < keep.sum():
                fpr, tpr, thr = roc_curve(labels[keep], probs[keep])
                curve = pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thr})
                _write_csv(curve, run_dir / "curves" / f"roc_{task}_{model}.csv")
    atomic_write_json(run_dir / "metrics.json", metrics)
    atomic_write_text(run_dir / "table.md", table_markdown(metrics))
    return metrics
