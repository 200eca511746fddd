"""Compare two classification runs on the studies they share (paired DeLong)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.errors import ConfigError, MissingFileError
from cxrlab.metrics.classification import delong_paired_test


def _predictions(run_dir: Path, split: str) -> pd.DataFrame:
    path = Path(run_dir) / f"predictions_{split}.csv"
    if not path.is_file():
        raise MissingFileError(path, f"no {split} predictions; run `cxrlab evaluate {run_dir} --split {split}`")
    return pd.read_csv(path, dtype={"study_id": str})


def compare_runs(run_a: str | Path, run_b: str | Path, split: str = "test") -> pd.DataFrame:
    """Per-task AUROC of two runs on their shared studies, ΔAUROC (B − A), paired DeLong p.

    Raises:
        ConfigError: The runs share no studies or no tasks (different splits/data).
    """
    a, b = _predictions(Path(run_a), split), _predictions(Path(run_b), split)
    merged = a.merge(b, on="study_id", suffixes=("_a", "_b"))
    if merged.empty:
        raise ConfigError(f"{run_a} vs {run_b}", f"the runs share no {split} studies (different data or split_seed)")
    tasks = [c[len("prob_"):] for c in a.columns if c.startswith("prob_") and c in b.columns]
    if not tasks:
        raise ConfigError(f"{run_a} vs {run_b}", "the runs share no tasks")
    rows = []
    for task in tasks:
        y_a, y_b = merged[f"label_{task}_a"].to_numpy(float), merged[f"label_{task}_b"].to_numpy(float)
        keep = ~np.isnan(y_a) & (np.isnan(y_b) | (y_a == y_b))
        y = y_a[keep]
        auc_a, auc_b, z, p = delong_paired_test(y, merged[f"prob_{task}_a"].to_numpy(float)[keep],
                                                merged[f"prob_{task}_b"].to_numpy(float)[keep])
        rows.append({"task": task, "n": int(keep.sum()), "n_positive": int(np.sum(y == 1)),
                     "auroc_a": auc_a, "auroc_b": auc_b, "delta_auroc": auc_b - auc_a, "z": z, "p_value": p})
    return pd.DataFrame(rows)
