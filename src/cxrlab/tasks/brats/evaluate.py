"""Evaluating a BraTS run on its test cases: Dice and HD95 per region (mm), per case and mean/median.

Predictions are scored on each case's full voxel grid against the reference, with the
BraTS empty-region conventions (:mod:`cxrlab.metrics.brats`); they are also written as
NIfTI (``predictions/``) and PNG overlays (``overlays/``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cxrlab.config.brats import BratsConfig, config_from_mapping
from cxrlab.data.datasets.brats import (
    CONVENTIONS,
    REGIONS,
    BratsDataset,
    detect_convention,
    region_masks,
    to_canonical,
)
from cxrlab.errors import ConfigError, MissingFileError, VolumeMismatchError
from cxrlab.inference.brats import BratsPredictor, write_overlay, write_prediction
from cxrlab.io.nifti import is_nifti, nifti_stem, read_nifti
from cxrlab.metrics.brats import BratsMetric
from cxrlab.tasks.brats.data import open_dataset
from cxrlab.utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


def scores_table(summary: dict[str, Any], title: str = "") -> str:
    """A markdown table: one row per region, Dice and HD95 mean and median."""
    lines = ([f"**{title}**", ""] if title else []) + [
        "| region | Dice mean | Dice median | HD95 mean (mm) | HD95 median (mm) |", "|---|---:|---:|---:|---:|"]
    for region in REGIONS:
        mean, median = summary["mean"][region], summary["median"][region]
        lines.append(f"| {region} | {mean['dice']:.3f} | {median['dice']:.3f} | {mean['hd95']:.2f} | "
                     f"{median['hd95']:.2f} |")
    return "\n".join(lines) + "\n"


def per_case_csv(cases: dict[str, dict[str, dict[str, float]]]) -> str:
    """``case,WT_dice,WT_hd95,TC_dice,...`` lines."""
    header = ["case"] + [f"{r}_{k}" for r in REGIONS for k in ("dice", "hd95")]
    lines = [",".join(header)]
    for name, scores in cases.items():
        lines.append(",".join([name] + [f"{scores[r][k]:.6g}" for r in REGIONS for k in ("dice", "hd95")]))
    return "\n".join(lines) + "\n"


def evaluate_run(run_dir: str | Path, cfg: BratsConfig | None = None, dataset: BratsDataset | None = None,
                 split: str = "test", write_files: bool = True) -> dict[str, Any]:
    """Predict the run's ``split`` cases, score them, write ``metrics.json``, ``per_case.csv``, ``table.md``.

    Returns:
        ``{"split", "cases": {case: {region: {"dice", "hd95"}}}, "mean": ..., "median": ...}``.

    Raises:
        MissingFileError: Not a run folder.
        ConfigError: The split has no case with a segmentation.
    """
    run_dir = Path(run_dir)
    if cfg is None:
        if not (run_dir / "config.yaml").is_file():
            raise MissingFileError(run_dir / "config.yaml", "not a BraTS run folder")
        cfg = config_from_mapping(yaml.safe_load((run_dir / "config.yaml").read_text()) or {})
    split_path = run_dir / "split.json"
    if not split_path.is_file():
        raise MissingFileError(split_path, "the run has no case split")
    case_ids = json.loads(split_path.read_text()).get(split) or []
    dataset = dataset or open_dataset(cfg)
    predictor = BratsPredictor.from_run_dir(run_dir)
    metric = BratsMetric(with_hd95=True)
    for case_id in case_ids:
        case = dataset.load(case_id)
        if case.label is None:
            continue
        pred = predictor.predict(case)
        metric.update(case_id, region_masks(pred), region_masks(case.label), case.spacing)
        if write_files:
            write_prediction(case, pred, run_dir / "predictions")
            write_overlay(run_dir / "overlays" / f"{case_id}.png", case, pred)
    if not metric.cases:
        raise ConfigError("data.split", f"the run's {split} split has no case with a segmentation to score")
    summary = metric.aggregate()
    result = {"split": split, "n_cases": len(metric.cases), "cases": metric.cases, **summary}
    atomic_write_json(run_dir / "metrics.json", result)
    atomic_write_text(run_dir / "per_case.csv", per_case_csv(metric.cases))
    atomic_write_text(run_dir / "table.md", scores_table(summary, f"{split} cases (n={len(metric.cases)})"))
    log.info("scored %d %s case(s): mean WT Dice %.3f", len(metric.cases), split, summary["mean"]["WT"]["dice"])
    return result


def brats_mean_dice(result: dict[str, Any]) -> float:
    """Mean over regions of the mean Dice."""
    return float(np.mean([result["mean"][r]["dice"] for r in REGIONS]))


def score_label_folders(pred_dir: str | Path, truth_dir: str | Path, labels: str = "auto") -> dict[str, Any]:
    """Dice and HD95 per region of two folders of label NIfTIs matched by name (``.nii`` / ``.nii.gz`` alike).

    Args:
        pred_dir, truth_dir: The folders.
        labels: ``2020``, ``2023``, ``msd`` or ``auto`` (detected from the values of every
            file: 4 without 3 -> 2020, any 3 -> 2023).

    Returns:
        ``{"labels", "cases": {name: {region: {"dice", "hd95"}}}, "mean": ..., "median": ...}``;
        HD95 in mm from the reference's spacing.

    Raises:
        MissingFileError: A folder is missing or empty, or a file has no counterpart.
        VolumeMismatchError: A pair differs in shape.
        LabelValueError: Values outside the convention.
    """
    def listing(folder: Path, what: str) -> dict[str, Path]:
        if not folder.is_dir():
            raise MissingFileError(folder, f"{what} folder not found")
        files = {nifti_stem(p): p for p in sorted(folder.iterdir()) if is_nifti(p) and not p.name.startswith(".")}
        if not files:
            raise MissingFileError(folder, f"no NIfTI label files in the {what} folder")
        return files

    pred_dir, truth_dir = Path(pred_dir), Path(truth_dir)
    preds, truths = listing(pred_dir, "prediction"), listing(truth_dir, "truth")
    for names, folder, other in ((set(preds) - set(truths), truth_dir, "truth"),
                                 (set(truths) - set(preds), pred_dir, "prediction")):
        if names:
            first = sorted(names)[0]
            raise MissingFileError(folder / first, f"no {other} file for {first!r} "
                                                   f"({len(names)} file(s) without a counterpart)")
    pairs = {name: (read_nifti(preds[name], dtype=np.int16), read_nifti(truths[name], dtype=np.int16))
             for name in sorted(preds)}
    if labels == "auto":
        values: set[int] = set()
        for pred, truth in pairs.values():
            values |= {int(v) for v in np.unique(pred.array)} | {int(v) for v in np.unique(truth.array)}
        labels = detect_convention(values)
    if labels not in CONVENTIONS:
        raise ConfigError("--labels", f"unknown label convention {labels!r}; choose from auto, {', '.join(CONVENTIONS)}")
    metric = BratsMetric(with_hd95=True)
    for name, (pred, truth) in pairs.items():
        if pred.array.shape != truth.array.shape:
            raise VolumeMismatchError(pred.path, f"prediction {pred.array.shape} and truth {truth.array.shape} "
                                                 f"({truth.path}) differ in shape")
        metric.update(name, region_masks(to_canonical(pred.array, labels, pred.path, name)),
                      region_masks(to_canonical(truth.array, labels, truth.path, name)), truth.spacing)
    return {"labels": labels, "cases": metric.cases, **metric.aggregate()}
