"""The BraTS demo: SYNTHETIC phantoms -> 3D U-Net -> per-region table -> survival -> stats, in minutes on a CPU."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxrlab.config.brats import BratsConfig, config_from_mapping
from cxrlab.data.datasets.brats import REGIONS, BratsDataset, region_masks
from cxrlab.errors import InputError
from cxrlab.tasks.brats.data import open_dataset
from cxrlab.tasks.brats.survival import survival_run, survival_table
from cxrlab.tasks.brats.train import train
from cxrlab.utils import atomic_write_json, atomic_write_text

DEMO_RECIPE: dict[str, Any] = {
    "name": "brats_demo",
    "seed": 0,
    "phantoms": {"layout": "brats2020", "n": 40, "size": 48, "seed": 0},
    "data": {"split": {"train": 0.5, "valid": 0.1, "test": 0.4}, "patch": [32, 32, 32], "samples_per_case": 2,
             "class_ratios": [1, 1, 1, 1], "batch_size": 4, "num_workers": 0},
    "model": {"arch": "unet", "channels": [8, 16, 32, 64], "strides": [2, 2, 2]},
    "train": {"epochs": 60, "lr": 0.003, "accelerator": "cpu", "devices": 1, "deterministic": True},
    "inference": {"overlap": 0.25, "sw_batch_size": 4, "tta": False},
    "survival": {"regressor": "random_forest", "source": "predicted", "folds": 5},
    "output": {"root": "runs/brats_demo", "mlflow": False},
}
"""The demo's recipe; ``configs/demo_brats.yaml`` holds the same settings (a test checks they agree)."""


def case_stats(dataset: BratsDataset) -> dict[str, Any]:
    """``{"layout", "labels", "cases": {id: {"WT", "TC", "ET"}}, "survival_rows", "skipped"}``: voxel counts per region."""
    cases: dict[str, dict[str, int]] = {}
    for case_id in dataset.case_ids:
        try:
            label = dataset.load_label(case_id)
        except InputError as err:
            dataset.skips.handle(err)
            continue
        if label is None:
            cases[case_id] = {r: 0 for r in REGIONS}
            continue
        cases[case_id] = {name: int(mask.sum()) for name, mask in region_masks(label).items()}
    return {"layout": dataset.layout, "labels": dataset.labels, "cases": cases,
            "survival_rows": len(dataset.survival), "skipped": dataset.skips.count}


def demo_config(out: str | Path, overrides: Sequence[str] = ()) -> BratsConfig:
    """The demo recipe with runs and phantoms under ``out``."""
    cfg = config_from_mapping(DEMO_RECIPE, overrides)
    out = Path(out)
    return dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, root=str(out)),
                               phantoms=dataclasses.replace(cfg.phantoms, out=str(out / "phantoms")))


def run_demo(out: str | Path, overrides: Sequence[str] = (), progress: bool = False) -> dict[str, Any]:
    """Write phantoms, train, evaluate, run survival and stats; returns the figures (also ``out/demo.json``).

    The run folder is replaced when it exists, so the demo can be rerun into the same folder.
    """
    cfg = demo_config(out, overrides)
    run_dir = train(cfg, overwrite=True, progress=progress)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    survival = survival_run(run_dir)
    stats = case_stats(open_dataset(dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, root=cfg.phantoms.out, layout=cfg.phantoms.layout))))
    atomic_write_json(Path(out) / "stats.json", stats)
    atomic_write_text(run_dir / "survival.md", survival_table(survival))
    summary = {"run_dir": str(run_dir), "segmentation": {"mean": metrics["mean"], "median": metrics["median"],
                                                         "n_cases": metrics["n_cases"]},
               "survival": survival, "stats_file": str(Path(out) / "stats.json")}
    atomic_write_json(Path(out) / "demo.json", summary)
    return summary
