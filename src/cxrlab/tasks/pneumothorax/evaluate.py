"""Evaluation of a pneumothorax run, K-fold cross-validation, the Table 5.1 report, and
prediction of new images with Kaggle RLE export.

:func:`evaluate_run` predicts the validation and test images with every trained model
(plain and with flip TTA), tunes each post-processing row of Table 5.1 on validation
and scores it on test. :func:`cross_validate` trains a run per patient fold (the fold
is the test set, the rest is split into train and validation) and reports mean ± std
over folds. :func:`predict_masks` applies a run (cascade or baseline, with its tuned
post-processing) to image files and :func:`export_predictions` writes masks, overlays
and the Kaggle CSV.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxrlab.config.pneumothorax import (
    ROW_METHODS,
    ROW_TITLES,
    ROWS,
    PneumothoraxConfig,
    load_pneumothorax_config,
)
from cxrlab.errors import ConfigError, MissingFileError
from cxrlab.inference.classifier import predict_images
from cxrlab.inference.pneumothorax import UNetPredictor, gate_checkpoint
from cxrlab.inference.postprocess import (
    Postprocess,
    Tuned,
    score_counts,
    tune,
)
from cxrlab.metrics.segmentation import gate_auroc, get_stats, segmentation_summary
from cxrlab.tasks.classification.data import (
    open_dataset,
    open_or_build_cache,
    preprocess_config,
)
from cxrlab.tasks.pneumothorax.data import SegData, _loader
from cxrlab.utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

METRIC_COLUMNS = {"dice_per_image": "Dice per image", "dice_global": "Dice", "iou_global": "IoU"}
MODEL_TITLES = {"cascade": "One Case + gate", "baseline": "Baseline"}


# ------------------------------------------------------------------------ predictions


@torch.no_grad()
def unet_probabilities(checkpoint: Path, cfg: PneumothoraxConfig, data: SegData, indices: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Foreground probabilities of a U-Net checkpoint on dataset rows, plain and flip-TTA.

    Returns:
        ``(plain, tta, truths)``: float16 ``(N, S, S)`` twice and bool ``(N, S, S)``.
    """
    predictor = UNetPredictor.from_checkpoint(checkpoint)
    plain, tta, truths = [], [], []
    for batch in _loader(cfg, data, indices, False, 0):
        first = predictor.probabilities(batch["image"])
        plain.append(first[:, 0].half().numpy())
        tta.append(predictor.probabilities(batch["image"], tta=True, plain=first)[:, 0].half().numpy())
        truths.append(batch["mask"][:, 0].numpy() > 0.5)
    size = data.preprocess.size
    if not plain:
        empty = np.zeros((0, size, size), dtype=np.float16)
        return empty, empty.copy(), np.zeros((0, size, size), dtype=bool)
    return np.concatenate(plain), np.concatenate(tta), np.concatenate(truths)


def gate_probabilities(checkpoint: Path, data: SegData, indices: np.ndarray) -> np.ndarray:
    """The gate's pneumothorax probability for dataset rows (read and preprocessed like its training)."""
    if len(indices) == 0:
        return np.zeros(0)
    paths = data.dataset.table["path"].astype(str).iloc[indices].tolist()
    frame = predict_images(checkpoint, paths)
    return frame["prob_Pneumothorax"].to_numpy(dtype=np.float64)


# -------------------------------------------------------------------------- evaluation


def _data_from_split(cfg: PneumothoraxConfig, run_dir: Path) -> SegData:

    path = run_dir / "split.json"
    if not path.is_file():
        raise MissingFileError(path, "no split.json; was the run trained by `cxrlab seg train`?")
    split = json.loads(path.read_text())
    dataset = open_dataset(cfg.data, dict(cfg.data.options))
    ids = dataset.table["image_id"].astype(str).to_numpy()
    splits = {}
    for name, part in split.items():
        idx = np.asarray(part["indices"], dtype=np.int64)
        if len(idx) and (idx.max() >= len(ids) or list(ids[idx]) != part["image_ids"]):
            raise ConfigError(path, f"the {name} images no longer match the dataset {cfg.data.options}")
        splits[name] = idx
    pcfg = preprocess_config(cfg.data)
    cache = open_or_build_cache(dataset, pcfg, cfg.data, Path(cfg.output.root), max(int(cfg.data.num_workers), 1))
    return SegData(dataset, cache, pcfg, splits)


def parse_postprocess(text: str) -> tuple[str, Postprocess | None]:
    """``ROW`` (tuned on validation) or ``ROW:key=value,...`` (fixed), e.g. ``threshold:threshold=0.4,min_area=30``.

    Raises:
        ConfigError: Unknown row or key, or a value that is not a number.
    """
    row, _, spec = text.partition(":")
    row = row.strip()
    if row not in ROWS:
        raise ConfigError("--postprocess", f"unknown row {row!r}; choose from {ROWS}")
    if not spec.strip():
        return row, None
    method, tta = ROW_METHODS[row]
    values: dict[str, Any] = {"method": method, "tta": tta}
    for item in spec.split(","):
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError("--postprocess", f"{item!r} is not key=value")
        try:
            values[key.strip()] = int(value) if key.strip() == "min_area" else float(value)
        except ValueError as err:
            raise ConfigError("--postprocess", f"{key}: {value!r} is not a number") from err
    return row, Postprocess.from_dict(values)


def _score(post: Postprocess, probs: np.ndarray, truths: np.ndarray, gate: np.ndarray | None) -> dict[str, Any]:
    tp, fp, fn, _ = get_stats(post.masks(probs, gate), truths)
    return segmentation_summary(tp, fp, fn)


def evaluate_run(run_dir: str | Path, rows: Sequence[str] | None = None,
                 fixed: Mapping[str, Postprocess] | None = None, cfg: PneumothoraxConfig | None = None,
                 data: SegData | None = None) -> dict[str, Any]:
    """Tune every post-processing row on validation and score it on test, per model.

    Args:
        run_dir: A run of :func:`cxrlab.tasks.pneumothorax.train.train`.
        rows: Rows of Table 5.1 to compute (default: the recipe's ``rows``).
        fixed: Row -> a fixed :class:`Postprocess` used instead of tuning.
        cfg, data: The recipe and opened data when the caller has them.

    Returns:
        The rows computed now, as in ``metrics.json``: ``models -> model -> row ->
        {postprocess, valid, test}`` summaries and ``gate`` AUROCs. ``metrics.json`` and
        ``postprocess.json`` keep the rows of an earlier evaluation that were not
        computed now (so re-scoring one row leaves the others usable by ``seg predict``);
        ``results.csv`` and ``table.md`` show them all.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise MissingFileError(run_dir, "not a pneumothorax run directory (no config.yaml)")
    cfg = cfg or load_pneumothorax_config(run_dir / "config.yaml")
    data = data or _data_from_split(cfg, run_dir)
    rows = list(rows or cfg.rows)
    fixed = dict(fixed or {})
    metrics: dict[str, Any] = {"models": {}, "gate": {}, "splits": {
        s: {"n_images": int(len(i)), "n_positive": int(np.sum(data.labels(s) == 1))} for s, i in data.splits.items()}}
    for model in cfg.models:
        role = "baseline" if model == "baseline" else "one_case"
        checkpoint = run_dir / role / "best.pt"
        if not checkpoint.is_file():
            raise MissingFileError(checkpoint, f"the {model} model has no checkpoint; did its training finish?")
        probs = {s: unet_probabilities(checkpoint, cfg, data, data.splits[s]) for s in ("valid", "test")}
        gates: dict[str, np.ndarray | None] = {"valid": None, "test": None}
        if model == "cascade":
            gate_ckpt = gate_checkpoint(run_dir)
            gates = {s: gate_probabilities(gate_ckpt, data, data.splits[s]) for s in ("valid", "test")}
            metrics["gate"] = {f"auroc_{s}": gate_auroc(data.labels(s), gates[s]) if len(gates[s]) else None
                               for s in ("valid", "test")}
        results: dict[str, Any] = {}
        for row in rows:
            method, tta = ROW_METHODS[row]
            pick = 1 if tta else 0
            valid_probs, valid_truth = probs["valid"][pick], probs["valid"][2]
            if row in fixed:
                post = fixed[row]
                counts = get_stats(post.masks(valid_probs, gates["valid"]), valid_truth)[:3]
                tuned = Tuned(post, float(score_counts(*counts, cfg.postprocess.metric)))
            else:
                tuned = tune(method, valid_probs, valid_truth, cfg.postprocess, tta=tta, gate_probs=gates["valid"])
            post = tuned.postprocess
            test = (_score(post, probs["test"][pick], probs["test"][2], gates["test"])
                    if len(data.splits["test"]) else None)
            results[row] = {"postprocess": post.to_dict(), "valid_score": tuned.score,
                            "valid": _score(post, valid_probs, valid_truth, gates["valid"]), "test": test}
        metrics["models"][model] = results
    merged = _merge_rows(run_dir / "metrics.json", metrics)
    atomic_write_json(run_dir / "postprocess.json", {
        model: {row: {**r["postprocess"], "valid_score": r["valid_score"]} for row, r in rows_.items()}
        for model, rows_ in merged["models"].items()})
    atomic_write_json(run_dir / "metrics.json", merged)
    frame = results_frame(merged)
    atomic_write_text(run_dir / "results.csv", frame.to_csv(index=False))
    split = "test" if len(data.splits["test"]) else "valid"
    atomic_write_text(run_dir / "table.md", markdown_table(frame[frame["split"] == split], title=f"{split} split"))
    return metrics


def _merge_rows(path: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` plus the rows of the earlier ``metrics.json`` it does not recompute (Table 5.1 order)."""
    if not path.is_file():
        return metrics
    earlier = json.loads(path.read_text()).get("models", {})
    models = {}
    for model, rows in metrics["models"].items():
        both = {**earlier.get(model, {}), **rows}
        models[model] = {row: both[row] for row in ROWS if row in both}
    return {**metrics, "models": models}


# ------------------------------------------------------------------------------ tables


def results_frame(metrics: Mapping[str, Any], fold: int | None = None) -> pd.DataFrame:
    """Long table ``[fold,] model, row, split, metric, value`` of a run's ``metrics.json``."""
    records = []
    for model, rows in metrics["models"].items():
        for row, result in rows.items():
            for split in ("valid", "test"):
                summary = result.get(split)
                if not summary:
                    continue
                values = {**{k: summary[k] for k in METRIC_COLUMNS},
                          "fp_masks_on_empty": summary["fp_masks_on_empty"],
                          "missed_positives": summary["image_confusion"]["fn"], "n_images": summary["n_images"]}
                for key, value in values.items():
                    records.append({"model": model, "row": row, "split": split, "metric": key,
                                    "value": np.nan if value is None else float(value)})
    frame = pd.DataFrame.from_records(records, columns=["model", "row", "split", "metric", "value"])
    if fold is not None:
        frame.insert(0, "fold", fold)
    return frame


def _cell(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "n/a"
    if len(values) == 1:
        return f"{values.iloc[0]:.4f}"
    return f"{values.mean():.4f} (±{values.std(ddof=0):.3f})"


def markdown_table(frame: pd.DataFrame, title: str = "") -> str:
    """Table 5.1's layout: rows = post-processing, columns = metric x model; mean (±std) over folds.

    A second table gives the image-level counts: false-positive masks on empty images
    and missed positives (summed over folds).
    """
    models = [m for m in ("cascade", "baseline") if m in set(frame["model"])]
    rows = [r for r in ROWS if r in set(frame["row"])]
    header = ["Post-processing"] + [f"{METRIC_COLUMNS[m]}: {MODEL_TITLES[model]}"
                                    for m in METRIC_COLUMNS for model in models]
    lines = [f"**{title}**" if title else "", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    for row in rows:
        cells = [ROW_TITLES[row]]
        for metric in METRIC_COLUMNS:
            for model in models:
                sel = frame[(frame["model"] == model) & (frame["row"] == row) & (frame["metric"] == metric)]
                cells.append(_cell(sel["value"]))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| Post-processing | " + " | ".join(
        f"FP masks on empty: {MODEL_TITLES[m]} | missed positives: {MODEL_TITLES[m]}" for m in models) + " |",
        "|" + "---|" * (1 + 2 * len(models))]
    for row in rows:
        cells = [ROW_TITLES[row]]
        for model in models:
            for metric in ("fp_masks_on_empty", "missed_positives"):
                sel = frame[(frame["model"] == model) & (frame["row"] == row) & (frame["metric"] == metric)]
                cells.append(str(int(sel["value"].sum())) if len(sel) else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines).lstrip("\n") + "\n"


# -------------------------------------------------------------------- cross-validation


# ---------------------------------------------------------------------------- predict


