"""The dashboard's data layer: plain functions from run directories to tables and arrays.

Every page of the dashboard calls these and only draws what they return, so each can be
tested without a browser. They read the files runs wrote (see :mod:`cxrlab.dashboard.index`
for the kinds); nothing here imports :mod:`cxrlab.engine` or torch. Metrics come from
:mod:`cxrlab.metrics` (DeLong), curves from :func:`cxrlab.report.curves.class_curves`
where a run has no ``curves.json``, and the scaling tables from
:mod:`cxrlab.report.scaling` where a study has no report yet.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrlab.dashboard.index import SPLITS, RunRecord
from cxrlab.data.datasets import load_dataset
from cxrlab.errors import CSVFormatError, MissingFileError
from cxrlab.metrics.classification import delong_paired_test
from cxrlab.report import scaling

RUN_COLUMNS = ("name", "kind", "state", "dataset", "tasks", "arch", "resolution", "loss", "seed", "date",
               "mean_auroc", "parent", "problem")


# ---------------------------------------------------------------------------------- runs


def _date(value: float | None) -> str:
    return datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M") if value else ""


def _ci_text(auroc: float | None, low: float | None, high: float | None) -> str:
    if auroc is None:
        return "n/a"
    if low is None or high is None:
        return f"{auroc:.3f}"
    return f"{auroc:.3f} ({low:.3f}–{high:.3f})"


AUROC_KINDS = ("classification", "mrnet")
"""Run kinds with per-task AUROCs on the Runs and Compare pages (MRNet: the combined model per task)."""


def runs_frame(records: Iterable[RunRecord], split: str = "test") -> pd.DataFrame:
    """One row per run directory (every kind, unreadable ones included) for the Runs page."""
    rows = []
    for r in records:
        rows.append({"name": r.name, "kind": r.kind, "state": r.state, "dataset": r.dataset,
                     "tasks": ", ".join(r.tasks), "arch": r.arch, "resolution": r.resolution, "loss": r.loss,
                     "seed": r.seed, "date": _date(r.date),
                     "mean_auroc": r.mean_auroc.get(split, r.mean_auroc.get("valid")),
                     "parent": r.parent, "problem": r.problem})
    frame = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    for column in ("resolution", "seed"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    return frame


def auroc_frame(records: Iterable[RunRecord], split: str = "test") -> pd.DataFrame:
    """One row per classification run and task: recipe fields and AUROC with its DeLong CI.

    Runs without scores on ``split`` fall back to ``valid``; the ``split`` column says which.
    """
    rows = []
    for r in records:
        if r.kind not in AUROC_KINDS or not r.aurocs:
            continue
        used = split if split in r.aurocs else next(s for s in SPLITS if s in r.aurocs)
        for task, score in r.aurocs[used].items():
            rows.append({"run": r.name, "task": task, "arch": r.arch, "resolution": r.resolution, "loss": r.loss,
                         "seed": r.seed, "dataset": r.dataset, "date": _date(r.date), "split": used,
                         "auroc": score["auroc"], "ci_low": score["ci_low"], "ci_high": score["ci_high"],
                         "auroc_ci": _ci_text(score["auroc"], score["ci_low"], score["ci_high"]),
                         "n": score["n"], "n_positive": score["n_positive"], "study": r.parent})
    columns = ["run", "task", "arch", "resolution", "loss", "seed", "dataset", "date", "split", "auroc", "ci_low",
               "ci_high", "auroc_ci", "n", "n_positive", "study"]
    frame = pd.DataFrame(rows, columns=columns)
    for column in ("resolution", "seed", "n", "n_positive"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    return frame


def filter_frame(frame: pd.DataFrame, **choices: Sequence[Any] | None) -> pd.DataFrame:
    """Rows whose column values are among the chosen ones (an empty or None choice keeps all)."""
    keep = pd.Series(True, index=frame.index)
    for column, values in choices.items():
        if values:
            keep &= frame[column].isin(list(values))
    return frame[keep]


# ------------------------------------------------------------------------------- compare


def load_predictions(record: RunRecord, split: str) -> pd.DataFrame:
    """``predictions_<split>.csv`` of a classification run (per study: label_<task>, prob_<task>).

    Raises:
        MissingFileError: The run has no predictions for ``split``.
        CSVFormatError: The file has no ``study_id`` column.
    """
    path = record.path / f"predictions_{split}.csv"
    if not path.is_file():
        raise MissingFileError(path, f"run {record.name} has no {split} predictions")
    if record.kind == "mrnet":
        return mrnet_predictions(path, record.tasks)
    frame = pd.read_csv(path, dtype={"study_id": str})
    if "study_id" not in frame.columns:
        raise CSVFormatError(path, f"no study_id column; found {list(frame.columns)}")
    return frame


def mrnet_predictions(path: Path, tasks: Sequence[str]) -> pd.DataFrame:
    """An MRNet run's ``predictions_<split>.csv`` (``id``, ``<task>``, ``<task>_combined``) in the
    classification shape the Compare page reads (``study_id``, ``label_<task>``, ``prob_<task>``).

    Raises:
        CSVFormatError: A column is missing.
    """
    frame = pd.read_csv(path, dtype={"id": str})
    missing = [c for c in ["id", *tasks, *(f"{t}_combined" for t in tasks)] if c not in frame.columns]
    if missing:
        raise CSVFormatError(path, f"MRNet predictions lack the column(s) {missing}")
    out = pd.DataFrame({"study_id": frame["id"]})
    for task in tasks:
        out[f"label_{task}"] = frame[task]
        out[f"prob_{task}"] = frame[f"{task}_combined"]
    return out


def mrnet_exam(record: RunRecord, exam_id: str) -> dict[str, np.ndarray]:
    """An exam of an MRNet run's data (``data.root`` in its ``config.yaml``): plane -> uint8-range
    ``(slices, H, W)`` array.

    Raises:
        MissingFileError: The run's recipe names no MRNet-v1.0 folder.
        ExamError, VolumeError: The exam cannot be read.
    """
    import yaml

    from cxrlab.data.datasets.mrnet import read_exam

    cfg = yaml.safe_load((record.path / "config.yaml").read_text(encoding="utf-8")) or {}
    root = (cfg.get("data") or {}).get("root")
    if not root:
        raise MissingFileError(record.path / "config.yaml", "the run names no data.root (MRNet-v1.0 folder)")
    _, volumes = read_exam(exam_id, root)
    return {plane: volume.array for plane, volume in volumes.items()}


def mrnet_cams(record: RunRecord, exam_id: str, task: str) -> dict[str, dict[str, Any]]:
    """The top-slice CAMs ``cams/<exam>_<task>_<plane>.npz`` an MRNet run wrote for an exam:
    plane -> ``{"slice": int, "map": (h, w) float in [0, 1], "probability": float}``."""
    out = {}
    for path in sorted((record.path / "cams").glob(f"{exam_id}_{task}_*.npz")):
        with np.load(path) as npz:
            out[path.stem.rsplit("_", 1)[1]] = {"slice": int(npz["slice"]), "map": npz["map"].astype(np.float32),
                                                "probability": float(npz["probability"])}
    return out


def cam_overlay(image: np.ndarray, cam: np.ndarray | None, alpha: float = 0.45) -> np.ndarray:
    """A grey slice (any range) as uint8 RGB, with a CAM (any size, [0, 1]) blended in red-yellow."""
    from PIL import Image

    low, high = float(image.min()), float(image.max())
    grey = (255.0 * (image - low) / (high - low)) if high > low else np.zeros(image.shape)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if cam is not None:
        resized = np.asarray(Image.fromarray(cam.astype(np.float32), mode="F").resize(
            (image.shape[1], image.shape[0]), Image.BILINEAR))
        heat = np.stack([np.full_like(resized, 255.0), 255.0 * resized, np.zeros_like(resized)], axis=-1)
        weight = alpha * resized[..., None]
        rgb = (1.0 - weight) * rgb + weight * heat
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def load_curves(record: RunRecord, split: str) -> dict[str, dict[str, Any]]:
    """Per-task ROC/PR curve data of a run: ``curves_<split>/curves.json``, else from its predictions."""
    path = record.path / f"curves_{split}" / "curves.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8")).get("classes", {})
    from cxrlab.report.curves import class_curves

    frame = load_predictions(record, split)
    curves = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for column in frame.columns:
            if column.startswith("prob_") and f"label_{column[5:]}" in frame.columns:
                task = column[5:]
                curves[task] = class_curves(frame[f"label_{task}"].to_numpy(float), frame[column].to_numpy(float))
    return curves


def compare_aurocs(records: Sequence[RunRecord], split: str, reference: str,
                   tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """AUROC with DeLong CI per run and task, and the paired DeLong test against ``reference``.

    The paired test uses the studies both runs scored whose label is known and the same in
    both prediction files (``n_paired``); runs on disjoint studies get NaN with a note.

    Returns:
        Columns ``task, run, auroc, ci_low, ci_high, auroc_ci, delta, z, p_value, n_paired, note``;
        ``delta = AUROC(run) - AUROC(reference)`` on the paired studies.
    """
    by_name = {r.name: r for r in records}
    if reference not in by_name:
        raise MissingFileError(reference, "reference run is not among the compared runs")
    preds = {name: load_predictions(r, split) for name, r in by_name.items()}
    wanted = list(tasks) if tasks else list(by_name[reference].aurocs.get(split, {}))
    rows = []
    ref_pred = preds[reference]
    for task in wanted:
        for name, record in by_name.items():
            score = record.aurocs.get(split, {}).get(task)
            if score is None:
                continue
            row = {"task": task, "run": name, "auroc": score["auroc"], "ci_low": score["ci_low"],
                   "ci_high": score["ci_high"], "auroc_ci": _ci_text(score["auroc"], score["ci_low"], score["ci_high"]),
                   "delta": np.nan, "z": np.nan, "p_value": np.nan, "n_paired": np.nan, "note": ""}
            if name == reference:
                row["note"] = "reference"
            else:
                row.update(_paired(ref_pred, preds[name], task, delong_paired_test))
            rows.append(row)
    columns = ["task", "run", "auroc", "ci_low", "ci_high", "auroc_ci", "delta", "z", "p_value", "n_paired", "note"]
    return pd.DataFrame(rows, columns=columns)


def _paired(ref: pd.DataFrame, other: pd.DataFrame, task: str, test: Any) -> dict[str, Any]:
    label, prob = f"label_{task}", f"prob_{task}"
    if label not in ref or prob not in ref or label not in other or prob not in other:
        return {"note": f"no {prob} in both prediction files"}
    merged = ref[["study_id", label, prob]].merge(other[["study_id", label, prob]], on="study_id",
                                                  suffixes=("_ref", "_run"))
    same = merged[f"{label}_ref"].notna() & (merged[f"{label}_ref"] == merged[f"{label}_run"])
    merged = merged[same & np.isfinite(merged[f"{prob}_ref"]) & np.isfinite(merged[f"{prob}_run"])]
    y = merged[f"{label}_ref"].to_numpy(float)
    if len(merged) == 0 or y.min() == y.max():
        return {"n_paired": len(merged), "note": "no common studies with both classes"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auc_ref, auc_run, z, p = test(y, merged[f"{prob}_ref"].to_numpy(float), merged[f"{prob}_run"].to_numpy(float))
    return {"delta": auc_run - auc_ref, "z": -z, "p_value": p, "n_paired": len(merged), "note": ""}


# ------------------------------------------------------------------------------- scaling


def scaling_tables(study_dir: str | Path) -> dict[str, pd.DataFrame]:
    """A study's ``results``, ``summary`` (Fig 4.1), ``delta`` (Fig 4.2), ``efficientnet`` (Fig 4.3),
    ``best`` and, when present, ``localization`` tables; ``problems`` lists tables that could
    not be computed (left empty).

    The written CSVs of ``cxrlab study report`` are used when present and at least as new
    as ``results.csv``; otherwise they are computed from ``results.csv`` with
    :mod:`cxrlab.report.scaling` (nothing is written).
    """
    study_dir = Path(study_dir)
    results = scaling.load_results(study_dir)
    written = {"summary": "summary_by_resolution.csv", "delta": "model_scaling_delta.csv",
               "efficientnet": "efficientnet_scaling.csv", "best": "best_models.csv"}
    results_time = (study_dir / "results.csv").stat().st_mtime
    fresh = {k: study_dir / f for k, f in written.items()
             if (study_dir / f).is_file() and (study_dir / f).stat().st_mtime >= results_time}
    tables = {"results": results}
    pairs = scaling.study_pairs(study_dir)
    compute = {"summary": lambda: scaling.summary_by_resolution(results),
               "delta": lambda: scaling.model_scaling_delta(results, pairs),
               "efficientnet": lambda: scaling.efficientnet_scaling(results),
               "best": lambda: scaling.best_models(results)}
    problems = []
    for key, make in compute.items():
        if key in fresh:
            tables[key] = pd.read_csv(fresh[key])
            continue
        try:
            tables[key] = make()
        except (TypeError, ValueError, KeyError) as err:
            tables[key] = pd.DataFrame(columns=["task", "resolution"])
            problems.append(f"{written[key]} could not be computed: {type(err).__name__}: {err}")
    tables["problems"] = pd.DataFrame({"problem": problems})
    if "is_best" in tables["delta"]:
        tables["delta"]["is_best"] = tables["delta"]["is_best"].astype(str).str.lower() == "true"
    if (study_dir / "localization_best_runs.csv").is_file():
        tables["localization"] = pd.read_csv(study_dir / "localization_best_runs.csv")
    return tables


# ------------------------------------------------------------------------------- explain


def explanation_table(folders: Iterable[str | Path]) -> pd.DataFrame:
    """Rows of every ``explanations.csv`` with the overlay's absolute path and the map's size.

    ``resolution`` is the side of the stored map (``.npy`` at the model's input size), read
    from the array header only: the rows of the CAM grid.
    """
    frames = []
    for folder in folders:
        folder = Path(folder)
        table = pd.read_csv(folder / "explanations.csv")
        if table.empty:
            continue
        table["folder"] = str(folder)
        table["overlay_path"] = [str(folder / o) for o in table["overlay"]]
        table["image_name"] = [Path(str(p)).name for p in table["image"]]
        table["resolution"] = [_npy_side(folder / str(m)) for m in table["map"]]
        frames.append(table)
    if not frames:
        return pd.DataFrame(columns=["image", "label", "probability", "method", "resolution", "overlay_path",
                                     "image_name", "folder"])
    return pd.concat(frames, ignore_index=True)


def _npy_side(path: Path) -> int | None:
    try:
        return int(np.load(path, mmap_mode="r").shape[0])
    except (OSError, ValueError, IndexError):
        return None


def cam_grid(table: pd.DataFrame, image_name: str) -> pd.DataFrame:
    """The CAM grid of one image: rows resolutions, columns classes, cells overlay paths."""
    part = table[table["image_name"] == image_name].dropna(subset=["resolution"])
    if part.empty:
        return pd.DataFrame()
    part = part.drop_duplicates(["resolution", "label"], keep="last")
    return part.pivot(index="resolution", columns="label", values="overlay_path").sort_index()


def localization_tables(folder: str | Path) -> dict[str, pd.DataFrame]:
    """``summary`` (per class, with CIs) and ``per_image`` (with the overlay path if written)."""
    folder = Path(folder)
    out = {"summary": pd.read_csv(folder / "localization_summary.csv")}
    per_image_path = folder / "localization_per_image.csv"
    per_image = pd.read_csv(per_image_path) if per_image_path.is_file() else pd.DataFrame()
    if not per_image.empty:
        per_image["overlay_path"] = [
            str(p) if p.is_file() else None
            for p in (folder / "overlays" / f"{Path(str(i)).stem}__{str(t).replace(' ', '_')}.png"
                      for i, t in zip(per_image["image"], per_image["target"]))]
    out["per_image"] = per_image
    return out


# -------------------------------------------------------------------------- segmentation

ROW_TITLES = {"argmax": "ArgMax", "threshold": "Raw threshold", "tta": "TTA", "triplet": "TTA + triplet"}
METRIC_TITLES = {"dice_per_image": "Dice per image", "dice_global": "Dice", "iou_global": "IoU"}
MODEL_TITLES = {"cascade": "One Case + gate", "baseline": "Baseline"}


def _cell(mean: float, std: float | None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return f"{mean:.4f}" if std is None or (isinstance(std, float) and math.isnan(std)) else f"{mean:.4f} (±{std:.3f})"


def table51(long: pd.DataFrame) -> pd.DataFrame:
    """Seed 002 Table 5.1's layout from a long table: rows post-processing, columns metric x model.

    Args:
        long: ``cv_table.csv`` (``model, row, metric, mean, std``) or a run's ``results.csv``
            (``model, row, split, metric, value``; filter the split first).
    """
    if "mean" not in long.columns:
        long = long.rename(columns={"value": "mean"}).assign(std=np.nan)
    models = [m for m in ("cascade", "baseline") if m in set(long["model"])]
    rows = [r for r in ROW_TITLES if r in set(long["row"])]
    records = []
    for row in rows:
        record = {"Post-processing": ROW_TITLES[row]}
        for metric, title in {**METRIC_TITLES, "fp_masks_on_empty": "FP masks on empty",
                              "missed_positives": "missed positives"}.items():
            for model in models:
                sel = long[(long["model"] == model) & (long["row"] == row) & (long["metric"] == metric)]
                if sel.empty:
                    continue
                first = sel.iloc[0]
                record[f"{title}: {MODEL_TITLES[model]}"] = _cell(float(first["mean"]), _float_or_none(first["std"]))
        records.append(record)
    return pd.DataFrame(records)


def _float_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def segmentation_tables(folder: str | Path) -> dict[str, pd.DataFrame]:
    """A cross-validation (``cv_table.csv``, ``cv_results.csv``) or one run (``results.csv``):
    ``table`` in Table 5.1's layout and ``long`` (per fold or split) for charts."""
    folder = Path(folder)
    if (folder / "cv_table.csv").is_file():
        summary = pd.read_csv(folder / "cv_table.csv")
        long = pd.read_csv(folder / "cv_results.csv") if (folder / "cv_results.csv").is_file() else pd.DataFrame()
        return {"table": table51(summary), "long": long, "summary": summary}
    path = folder / "results.csv"
    if not path.is_file():
        raise MissingFileError(path, "no cv_table.csv or results.csv: not a finished segmentation run")
    long = pd.read_csv(path)
    split = "test" if (long["split"] == "test").any() else "valid"
    return {"table": table51(long[long["split"] == split]), "long": long, "split": pd.DataFrame({"split": [split]})}


def find_rle_csv(image_paths: Sequence[str], max_up: int = 6) -> Path | None:
    """The ground-truth RLE CSV of SIIM-layout images: the nearest ancestor's ``*rle*.csv``."""
    seen: set[Path] = set()
    for image in image_paths[:20]:
        folder = Path(image).parent
        for _ in range(max_up):
            if folder in seen:
                break
            seen.add(folder)
            hits = sorted(p for p in folder.glob("*rle*.csv*") if p.is_file())
            if hits:
                return hits[0]
            if folder.parent == folder:
                break
            folder = folder.parent
    return None


def _truth_mask(rles: dict[str, list[str]], image_id: str, shape: tuple[int, int]) -> np.ndarray | None:
    from cxrlab.io.rle import masks_union

    if image_id not in rles:
        return None
    height, width = shape
    return masks_union(rles[image_id], width, height)


def per_image_dice(pred_dir: str | Path, rle_csv: str | Path | None = None) -> pd.DataFrame:
    """Dice of every predicted mask of a ``cxrlab seg predict`` folder against the truth, worst first.

    Args:
        pred_dir: Folder with ``predictions.csv`` and ``masks/<stem>.png``.
        rle_csv: The truth (Kaggle RLE CSV); default: found next to the images (:func:`find_rle_csv`).

    Returns:
        ``image_id, path, dice, truth_pixels, pred_pixels, gate_probability, mask_path``;
        Dice is 1 when both masks are empty. Images without a truth row are left out.
    """
    from cxrlab.io import read_mask
    from cxrlab.io.rle import read_rle_csv

    pred_dir = Path(pred_dir)
    table = pd.read_csv(pred_dir / "predictions.csv", dtype={"image_id": str})
    rle_csv = Path(rle_csv) if rle_csv else find_rle_csv(table["path"].astype(str).tolist())
    if rle_csv is None:
        raise MissingFileError(pred_dir, "no ground-truth RLE CSV found next to the predicted images")
    rles = read_rle_csv(rle_csv)
    rows = []
    for rec in table.itertuples(index=False):
        mask_path = pred_dir / "masks" / f"{Path(str(rec.path)).stem}.png"
        if not mask_path.is_file():
            continue
        pred = read_mask(mask_path)
        truth = _truth_mask(rles, str(rec.image_id), pred.shape)
        if truth is None:
            continue
        inter, total = int((pred & truth).sum()), int(pred.sum() + truth.sum())
        rows.append({"image_id": rec.image_id, "path": rec.path, "dice": 1.0 if total == 0 else 2 * inter / total,
                     "truth_pixels": int(truth.sum()), "pred_pixels": int(pred.sum()),
                     "gate_probability": getattr(rec, "gate_probability", np.nan), "mask_path": str(mask_path)})
    frame = pd.DataFrame(rows, columns=["image_id", "path", "dice", "truth_pixels", "pred_pixels",
                                        "gate_probability", "mask_path"])
    frame.attrs["rle_csv"] = str(rle_csv)
    return frame.sort_values(["dice", "truth_pixels"], ascending=[True, False]).reset_index(drop=True)


def mask_overlay(image_path: str | Path, pred_mask_path: str | Path, rle_csv: str | Path | None,
                 image_id: str | None = None) -> dict[str, np.ndarray]:
    """The image (uint8 gray), the truth and predicted masks, and an RGB overlay
    (truth green, prediction red, overlap yellow)."""
    from cxrlab.io import read_image, read_mask
    from cxrlab.io.rle import read_rle_csv

    pixels = read_image(image_path).pixels
    gray = window_image(pixels, *default_window(pixels))
    pred = read_mask(pred_mask_path)
    truth = None
    if rle_csv is not None:
        truth = _truth_mask(read_rle_csv(rle_csv), image_id or Path(str(image_path)).stem, pred.shape)
    truth = truth if truth is not None else np.zeros_like(pred)
    rgb = np.stack([gray] * 3, axis=-1).astype(np.float32)
    for mask, color in ((truth & ~pred, (0, 200, 0)), (pred & ~truth, (230, 0, 0)), (pred & truth, (240, 220, 0))):
        rgb[mask] = 0.45 * rgb[mask] + 0.55 * np.array(color, dtype=np.float32)
    return {"image": gray, "truth": truth, "pred": pred, "overlay": rgb.astype(np.uint8)}


# ----------------------------------------------------------------------------- screening


def screening_tables(run_dir: str | Path) -> dict[str, Any]:
    """A screening run's ``report`` (report.json), its tables (``table2_confusion``,
    ``table3_risk_groups``, ``table9_unseen``, ``ablations``, ``cost``) and ``operating_points``."""
    run_dir = Path(run_dir)
    path = run_dir / "report.json"
    if not path.is_file():
        raise MissingFileError(path, "no report.json: the screening run has not been evaluated")
    report = json.loads(path.read_text(encoding="utf-8"))
    out: dict[str, Any] = {"report": report}
    for key in ("table2_confusion", "table3_risk_groups", "table9_unseen", "ablations", "cost"):
        table = run_dir / "tables" / f"{key}.csv"
        try:
            out[key] = pd.read_csv(table) if table.is_file() else pd.DataFrame()
        except pd.errors.EmptyDataError:
            out[key] = pd.DataFrame()
    points = []
    for variant, summary in (report.get("variants") or {}).items():
        point = summary.get("operating_point") or {}
        for set_name, scores in (summary.get("sets") or {}).items():
            points.append({"variant": variant, "set": set_name, "threshold": point.get("threshold"),
                           "target_sensitivity": point.get("target_sensitivity"),
                           "sensitivity": scores.get("sensitivity"), "specificity": scores.get("specificity"),
                           "auroc": scores.get("auroc"), "n": scores.get("n")})
    out["operating_points"] = pd.DataFrame(points)
    return out


def confusion_matrix(row: pd.Series) -> pd.DataFrame:
    """A ``table2_confusion`` row as a 2x2 frame: index AI decision, columns reference."""
    return pd.DataFrame({"reference normal": [row["ai_normal_ref_normal"], row["ai_abnormal_ref_normal"]],
                         "reference abnormal": [row["ai_normal_ref_abnormal"], row["ai_abnormal_ref_abnormal"]]},
                        index=["AI normal", "AI abnormal"]).astype(int)


# --------------------------------------------------------------------------------- image


def run_images(record: RunRecord, split: str | None = None) -> pd.DataFrame:
    """Images of a run's data with the run's prediction for each (``path`` plus ``prob_*`` columns).

    Classification runs: the recipe's dataset (labels CSV only, files not checked), the
    patients of ``split`` (``split.json``), joined to ``predictions_<split>.csv`` by study.
    Screening runs: ``predictions/<variant>_<set>.csv``. Segmentation predictions:
    ``predictions.csv``.
    """
    if record.kind == "screening":
        files = sorted((record.path / "predictions").glob("*.csv"))
        frames = [pd.read_csv(f).assign(source=f.stem) for f in files]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["path"])
    if record.kind == "seg_predictions":
        return pd.read_csv(record.path / "predictions.csv")
    if record.kind != "classification":
        return pd.DataFrame(columns=["path"])
    import yaml


    cfg = yaml.safe_load((record.path / "config.yaml").read_text(encoding="utf-8"))
    data = cfg["data"]
    dataset = load_dataset(data["dataset"], check_files=False, **dict(data.get("options") or {}))
    table = dataset.table[["path", "patient_id", "study_id", "view"]].copy()
    split = split or next((s for s in SPLITS if (record.path / f"predictions_{s}.csv").is_file()), None)
    if split is None:
        return table.assign(split=None)
    split_file = record.path / "split.json"
    if split_file.is_file():
        patients = set(json.loads(split_file.read_text(encoding="utf-8")).get(split, {}).get("patients", []))
        table = table[table["patient_id"].astype(str).isin(patients)]
    preds = load_predictions(record, split)
    table["study_id"] = table["study_id"].astype(str)
    return table.merge(preds, on="study_id", how="inner").assign(split=split).reset_index(drop=True)


def default_window(pixels: np.ndarray, low: float = 0.5, high: float = 99.5) -> tuple[float, float]:
    """``(center, width)`` spanning the ``low``-``high`` percentiles of the pixels."""
    lo, hi = np.percentile(pixels, [low, high])
    return float((lo + hi) / 2), float(max(hi - lo, 1e-6))


def window_image(pixels: np.ndarray, center: float, width: float) -> np.ndarray:
    """Window/level a radiograph to uint8: ``[center - width/2, center + width/2]`` maps to 0-255."""
    width = max(float(width), 1e-6)
    scaled = (np.asarray(pixels, dtype=np.float32) - (center - width / 2)) / width
    return np.rint(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


def image_meta(meta: Any) -> pd.DataFrame:
    """An :class:`cxrlab.io.ImageMeta` as a two-column table."""
    fields = ("format", "shape", "photometric", "transfer_syntax", "bits_stored", "pixel_spacing", "view_position",
              "patient_id", "study_id")
    return pd.DataFrame({"field": fields, "value": [str(getattr(meta, f, "")) for f in fields]})
