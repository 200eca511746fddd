"""Grad-CAM grid of a finished study (seed 001 Fig 4.5) and localization of its best runs.

One row per resolution, one column per class. Each cell shows the CAM of the best run
(highest validation AUROC) for that class at that resolution on one boxed image of the
class, the radiologist's box, and a caption with the output probability, the size of
the last feature map, the architecture and the run's AUROC. Reads ``results.csv`` and
the runs' ``best_auroc.pt``; imports nothing from :mod:`cxrlab.engine`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cxrlab.errors import ConfigError
from cxrlab.explain.localize import (
    index_images,
    localize,
    map_to_model,
    prepared_input,
    read_boxes,
)
from cxrlab.inference.classifier import ClassifierPredictor
from cxrlab.report.scaling import load_results
from cxrlab.utils import atomic_write


def best_runs(results: pd.DataFrame, classes: Sequence[str] | None = None) -> pd.DataFrame:
    """The best run (by ``best_auroc``) per task and resolution, optionally for some tasks."""
    clean = results.dropna(subset=["best_auroc"])
    if classes:
        wanted = {c.lower() for c in classes}
        clean = clean[clean["task"].str.lower().isin(wanted)]
    best = clean.loc[clean.groupby(["task", "resolution"])["best_auroc"].idxmax()]
    return best.sort_values(["task", "resolution"]).reset_index(drop=True)


def _boxed_classes(study_dir: Path, boxes_path: str | Path, images_dir: str | Path,
                   classes: Sequence[str] | None):
    """``(best runs, mapped boxes restricted to found images, image index)``."""
    results = load_results(study_dir)
    tasks = list(dict.fromkeys(results["task"]))
    boxes = map_to_model(read_boxes(boxes_path), tasks, classes)
    found = index_images(images_dir)
    boxes = boxes[boxes["image"].isin(found)]
    if boxes.empty:
        raise ConfigError(boxes_path, f"no box of the study's tasks ({', '.join(tasks)}) on an image under "
                                      f"{images_dir}")
    runs = best_runs(results, sorted(boxes["target"].unique()))
    return runs, boxes, found


def _checkpoint(study_dir: Path, run: pd.Series) -> Path:
    return study_dir / str(run["run_dir"]) / "best_auroc.pt"


def cam_grid(study_dir: str | Path, boxes_path: str | Path, images_dir: str | Path, out_png: str | Path,
             method: str = "gradcam", classes: Sequence[str] | None = None,
             images: Mapping[str, str] | None = None) -> Path:
    """Draw the Fig 4.5 grid; returns the PNG path (the captions also go to ``<out>.csv``).

    Args:
        study_dir: The study folder.
        boxes_path: ``BBox_List_2017.csv`` (or a plain box CSV).
        images_dir: Folder with the boxed images.
        out_png: Output file.
        method: CAM method.
        classes: Columns (model class names or NIH names); default: every task with boxes.
        images: Class -> image file name to show; default: the first boxed image of the
            class (sorted by name) found under ``images_dir``.
    """
    from cxrlab.explain.cam import heatmap, overlay

    study_dir = Path(study_dir)
    runs, boxes, found = _boxed_classes(study_dir, boxes_path, images_dir, classes)
    columns = sorted(runs["task"].unique())
    resolutions = sorted(runs["resolution"].unique())
    fig = Figure(figsize=(max(3.0 * len(columns), 4.5), 3.25 * len(resolutions) + 0.5), layout="constrained")
    cells = []
    for c, target in enumerate(columns):
        class_boxes = boxes[boxes["target"] == target]
        name = (images or {}).get(target) or sorted(class_boxes["image"].unique())[0]
        image_boxes = class_boxes[class_boxes["image"] == name]
        for r, resolution in enumerate(resolutions):
            ax = fig.add_subplot(len(resolutions), len(columns), r * len(columns) + c + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{target}\n{name}", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{resolution} px", fontsize=9)
            match = runs[(runs["task"] == target) & (runs["resolution"] == resolution)]
            if match.empty:
                ax.text(0.5, 0.5, "no run", ha="center", va="center", transform=ax.transAxes)
                continue
            run = match.iloc[0]
            predictor = ClassifierPredictor.from_run_dir(_checkpoint(study_dir, run))
            model, meta = predictor.model, predictor.meta
            picture, tensor, _, model_boxes = prepared_input(found[name], meta, image_boxes)
            result = heatmap(model, tensor, target, method, meta["labels"], with_png=False)
            ax.imshow(overlay(picture, result.map, boxes=model_boxes))
            h, w = result.feature_size
            cells.append({"class": target, "resolution": int(resolution), "image": name, "arch": run["arch"],
                          "best_auroc": float(run["best_auroc"]), "probability": result.probability,
                          "feature_map": f"{h}x{w}", "key": run.get("key", "")})
            caption = f"p={result.probability:.2f}  {h}x{w}\n{run['arch']}  AUROC {run['best_auroc']:.3f}"
            ax.text(0.02, 0.02, caption, transform=ax.transAxes, fontsize=7, va="bottom",
                    bbox={"facecolor": "white", "alpha": 0.8, "linewidth": 0})
    fig.suptitle(f"{method} of the best model\nper resolution (rows) and class (columns)", fontsize=10)
    FigureCanvasAgg(fig)
    table = pd.DataFrame(cells)
    atomic_write(Path(out_png).with_suffix(".csv"), lambda tmp: table.to_csv(tmp, index=False))
    return atomic_write(Path(out_png), lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def localize_best_runs(study_dir: str | Path, boxes_path: str | Path, images_dir: str | Path,
                       method: str = "gradcam", classes: Sequence[str] | None = None,
                       threshold: float = 0.5, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Localization scores of the best run per class and resolution (one row each).

    Columns: ``class, resolution, arch, best_auroc`` and the columns of
    :func:`cxrlab.explain.localize.summarize`.
    """
    study_dir = Path(study_dir)
    runs, _, _ = _boxed_classes(study_dir, boxes_path, images_dir, classes)
    rows = []
    for _, run in runs.iterrows():
        result = localize(_checkpoint(study_dir, run), boxes_path, images_dir, method=method,
                          threshold=threshold, classes=[run["task"]], overlays=False, n_boot=n_boot, seed=seed)
        for _, row in result.summary.iterrows():
            rows.append({"class": row["class"], "resolution": int(run["resolution"]), "arch": run["arch"],
                         "best_auroc": float(run["best_auroc"]),
                         **{k: v for k, v in row.items() if k != "class"}})
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.sort_values(["class", "resolution"]).reset_index(drop=True)
    atomic_write(study_dir / "localization_best_runs.csv", lambda tmp: frame.to_csv(tmp, index=False))
    return frame
