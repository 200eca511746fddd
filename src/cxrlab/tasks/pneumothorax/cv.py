"""Patient K-fold cross-validation of the pneumothorax comparison (seed 002 Table 5.1 layout)."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrlab.config.pneumothorax import PneumothoraxConfig
from cxrlab.data.splits import patient_kfold
from cxrlab.tasks.classification.data import open_dataset
from cxrlab.tasks.pneumothorax.data import ensure_phantoms
from cxrlab.tasks.pneumothorax.evaluate import markdown_table, results_frame
from cxrlab.tasks.pneumothorax.train import train
from cxrlab.utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


def cross_validate(cfg: PneumothoraxConfig, folds: int | None = None, out: str | Path | None = None,
                   progress: bool = False) -> dict[str, Any]:
    """Train and evaluate a run per patient fold; write the mean ± std table.

    Finished folds (``status.json`` says finished) are reused, so an interrupted
    cross-validation continues where it stopped.

    Args:
        cfg: The recipe.
        folds: Number of folds (default ``cv.folds``).
        out: Output folder (default ``output.root/name``); folds go to ``out/foldK``.
        progress: Lightning progress bars.

    Returns:
        ``{"folds": [...run dirs], "table": long DataFrame, "markdown": str, "gate_auroc": [...]}``;
        also writes ``cv_results.csv``, ``cv_table.csv``, ``cv_table.md``, ``cv_metrics.json``.
    """
    out = Path(out) if out is not None else Path(cfg.output.root) / cfg.name
    n_folds = int(folds or cfg.cv.folds)
    cfg = dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, root=str(out)))
    cfg = ensure_phantoms(cfg)
    dataset = open_dataset(cfg.data, dict(cfg.data.options))
    patients = dataset.table["patient_id"].astype(str).to_numpy()
    stratify = dataset.labels[:, 0] if cfg.cv.stratify else None
    assignment = patient_kfold(patients, n_splits=n_folds, seed=cfg.cv.seed, stratify=stratify)
    frames, run_dirs, gate_aurocs = [], [], []
    for k, (_, held_out) in enumerate(assignment):
        fold_cfg = dataclasses.replace(cfg, name=f"fold{k}")
        run_dir = out / fold_cfg.name
        status = run_dir / "status.json"
        state = json.loads(status.read_text()).get("state") if status.is_file() else None
        if state != "finished":
            if status.is_file():
                shutil.rmtree(run_dir)
            log.info("fold %d/%d: %d test images", k + 1, n_folds, len(held_out))
            train(fold_cfg, test_indices=held_out, progress=progress)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        frames.append(results_frame(metrics, fold=k))
        gate_aurocs.append(metrics.get("gate", {}).get("auroc_test"))
        run_dirs.append(str(run_dir))
    table = pd.concat(frames, ignore_index=True)
    test = table[table["split"] == "test"]
    summary = (test.groupby(["model", "row", "metric"], sort=False)["value"]
               .agg(mean="mean", std=lambda v: float(np.std(v, ddof=0)), n_folds="count").reset_index())
    markdown = markdown_table(test, title=f"{n_folds}-fold cross-validation by patient, test folds, mean (±std)")
    aurocs = [a for a in gate_aurocs if a is not None]
    if aurocs:
        markdown += f"\nGate AUROC on the test folds: {np.mean(aurocs):.4f} (±{np.std(aurocs):.3f})\n"
    atomic_write_text(out / "cv_results.csv", table.to_csv(index=False))
    atomic_write_text(out / "cv_table.csv", summary.to_csv(index=False))
    atomic_write_text(out / "cv_table.md", markdown)
    atomic_write_json(out / "cv_metrics.json", {"folds": run_dirs, "gate_auroc_test": gate_aurocs,
                                                 "summary": summary.to_dict(orient="records")})
    return {"folds": run_dirs, "table": table, "summary": summary, "markdown": markdown, "gate_auroc": gate_aurocs}
