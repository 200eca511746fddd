"""Evaluation of a classification run: its best checkpoint scored per split at study level
(AUROC with DeLong CI, thresholds), predictions and curves written into the run."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxrlab.config import ExperimentConfig, load_config
from cxrlab.errors import ConfigError, MissingFileError
from cxrlab.inference.classifier import ClassifierPredictor
from cxrlab.metrics.classification import per_class_report, study_level
from cxrlab.report.curves import save_roc_pr_curves
from cxrlab.tasks.classification.data import (
    PreparedData,
    make_loader,
    prepare_data,
)
from cxrlab.utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


@torch.no_grad()
def predict_split(model: torch.nn.Module | ClassifierPredictor, prepared: PreparedData, split: str,
                  cfg: ExperimentConfig, device: torch.device | None = None) -> pd.DataFrame:
    """Per-study labels and probabilities (maximum over the study's views), through the
    classifier's predictor (a bare model is wrapped with the run's metadata)."""
    device = device or torch.device("cpu")
    if not isinstance(model, ClassifierPredictor):
        model = ClassifierPredictor(model, {"labels": list(prepared.task_names), "num_classes": len(prepared.task_names),
                                            "preprocessing": prepared.preprocess.to_dict()})
    model.model.to(device)
    loader = make_loader(prepared, split, dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, num_workers=0)), train=False)
    probs, index = [], []
    for batch in loader:
        probs.append(model.probabilities(batch["image"].to(device)))
        index.append(batch["index"])
    index_np = torch.cat(index).numpy()
    probs_np = np.concatenate(probs)
    part = prepared.splits[split]
    labels = prepared.task_labels(split)[index_np]
    study_ids, study_y, study_p = study_level(part.study_ids[index_np], labels, probs_np)
    frame = pd.DataFrame({"study_id": study_ids})
    for k, name in enumerate(prepared.task_names):
        frame[f"label_{name}"] = study_y[:, k]
        frame[f"prob_{name}"] = study_p[:, k]
    return frame


def score_predictions(frame: pd.DataFrame, task_names: Sequence[str]) -> dict[str, Any]:
    """Per-task metrics of a per-study prediction table (see ``per_class_report``)."""
    y = frame[[f"label_{t}" for t in task_names]].to_numpy(dtype=float)
    p = frame[[f"prob_{t}" for t in task_names]].to_numpy(dtype=float)
    report = per_class_report(y, p, list(task_names))
    aurocs = [r["auroc"] for r in report.values() if r.get("auroc") == r.get("auroc")]
    return {"tasks": report, "mean_auroc": float(np.mean(aurocs)) if aurocs else float("nan"),
            "n_studies": int(len(frame))}


def evaluate_run(run_dir: str | Path, splits: Sequence[str] | None = None, checkpoint: str = "best_auroc.pt",
                 prepared: PreparedData | None = None, cfg: ExperimentConfig | None = None) -> dict[str, Any]:
    """Score a run's best checkpoint on its splits; writes metrics, predictions, curves."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise MissingFileError(run_dir, "not a run directory (no config.yaml)")
    ckpt = run_dir / checkpoint
    if not ckpt.is_file():
        raise MissingFileError(ckpt, "checkpoint not found; did the run finish an epoch?")
    cfg = cfg or load_config(run_dir / "config.yaml")
    prepared = prepared or prepare_data(cfg)
    model = ClassifierPredictor.from_run_dir(ckpt)
    metrics_path = run_dir / "metrics.json"
    import json

    metrics: dict[str, Any] = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    metrics["checkpoint"] = checkpoint
    metrics["tasks"] = prepared.task_names
    for split in splits or [s for s in ("valid", "test") if s in prepared.splits]:
        if split not in prepared.splits:
            raise ConfigError(split, f"no such split; this run has {sorted(prepared.splits)}")
        frame = predict_split(model, prepared, split, cfg)
        atomic_write_text(run_dir / f"predictions_{split}.csv", frame.to_csv(index=False))
        metrics[split] = score_predictions(frame, prepared.task_names)
        y = frame[[f"label_{t}" for t in prepared.task_names]].to_numpy(dtype=float)
        p = frame[[f"prob_{t}" for t in prepared.task_names]].to_numpy(dtype=float)
        save_roc_pr_curves(y, p, prepared.task_names, run_dir / f"curves_{split}")
    atomic_write_json(metrics_path, metrics)
    return metrics
