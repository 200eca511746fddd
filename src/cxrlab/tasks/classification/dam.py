"""Seed 000's comparison: the same data and split trained with BCE and with DAM.

DAM (Deep AUC Maximization, LibAUC) = BCE pretraining, then AUC-M fine-tuning with
PESG after re-initialising the classifier. Both recipes must read the same data with
the same ``split_seed`` so their test studies coincide and DeLong's paired test applies.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrlab.config import ExperimentConfig
from cxrlab.errors import ConfigError
from cxrlab.report.compare import compare_runs
from cxrlab.runs.rundir import read_status
from cxrlab.tasks.classification.train import run_directory, train


def _trained(cfg: ExperimentConfig, progress: bool) -> Path:

    run_dir = run_directory(cfg)
    state = read_status(run_dir).get("state")
    if state == "finished":
        return run_dir
    return train(cfg, resume=run_dir.exists(), progress=progress)


def bce_vs_dam(bce: ExperimentConfig, dam: ExperimentConfig, split: str = "test",
               progress: bool = True) -> tuple[Path, Path, pd.DataFrame]:
    """Train (or reuse finished) BCE and DAM runs, then compare them per task.

    Returns:
        The two run directories and the table of :func:`compare_runs` (B = DAM).

    Raises:
        ConfigError: The recipes differ in data, tasks or split, or share a run name.
    """
    if bce.data != dam.data:
        raise ConfigError("data", "BCE and DAM recipes must use identical data sections (same split_seed)")
    if bce.name == dam.name and bce.output.root == dam.output.root:
        raise ConfigError("name", "BCE and DAM recipes need different run names")
    if not any((p.loss or bce.train.loss) == "aucm" for p in dam.train.phases):
        raise ConfigError("train.phases", f"{dam.name}: no phase uses the aucm loss; this is not a DAM recipe")
    run_a = _trained(bce, progress)
    run_b = _trained(dam, progress)
    return run_a, run_b, compare_runs(run_a, run_b, split=split)
