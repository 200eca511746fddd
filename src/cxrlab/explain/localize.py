"""Score class activation maps against radiologists' boxes (NIH ChestX-ray14 ``BBox_List_2017``).

Three scores per (image, class), computed on the map upsampled to the model's input and
the box mapped through the same preprocessing (padding to square, resize):

* pointing game: the map's peak lies inside the box (optionally within ``tolerance``
  pixels of it) — a hit or a miss;
* IoU of the thresholded map (``map >= threshold``; maps are min-max normalised) with
  the box;
* energy in box: the share of the map's total mass inside the box. ``box_fraction`` (the
  box's share of the image) is what a uniform map would score. A map that is zero
  everywhere (Grad-CAM's ReLU can remove all evidence) has no energy: NaN, left out of the
  mean and counted in ``n_empty_maps``; it misses the pointing game and has IoU 0.

Per class the hit rate has a Wilson interval and the means of IoU and energy a
percentile-bootstrap interval over images.

NIH and CheXpert share Atelectasis, Cardiomegaly and Effusion (CheXpert "Pleural
Effusion") among seed 001's tasks; the mapping is the NIH adapter's
(:data:`cxrlab.data.datasets.nih.NIH_TO_CHEXPERT`). A box is scored for a model when its
label, or the label's CheXpert name, is one of the model's classes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrlab.data.datasets.base import boxes_mask
from cxrlab.data.datasets.nih import NIH_IMAGE_SIZE, NIH_TO_CHEXPERT, read_nih_boxes
from cxrlab.data.transforms import PreprocessConfig, preprocess, to_tensor
from cxrlab.errors import (
    ConfigError,
    CSVFormatError,
    InputError,
    MissingFileError,
    SkipLog,
)
from cxrlab.inference.classifier import ClassifierPredictor
from cxrlab.io import read_image
from cxrlab.utils import atomic_write, atomic_write_text

SEED001_SHARED = {nih: NIH_TO_CHEXPERT[nih] for nih in ("Atelectasis", "Cardiomegaly", "Effusion")}
"""The NIH box classes seed 001 scored, with their CheXpert names."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


# ------------------------------------------------------------------------------ boxes


def read_boxes(path: str | Path) -> pd.DataFrame:
    """Boxes as ``image, label, x, y, w, h, frame``.

    Accepts NIH's ``BBox_List_2017.csv(.gz)`` (coordinates in the 1024 x 1024 frame of the
    originals, ``frame = "nih1024"``) or a plain CSV with columns ``image, label, x, y,
    w, h`` in the image's own pixels (``frame = "pixels"``).

    Raises:
        MissingFileError: No such file.
        CSVFormatError: Neither layout, or bad coordinates.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "box file not found")
    head = pd.read_csv(path, nrows=0)
    if list(head.columns[:2]) == ["Image Index", "Finding Label"]:
        boxes = read_nih_boxes(path)
        boxes["frame"] = "nih1024"
        return boxes
    needed = ["image", "label", "x", "y", "w", "h"]
    if not set(needed) <= set(head.columns):
        raise CSVFormatError(path, f"expected NIH's 'Image Index,Finding Label,Bbox [x,y,w,h],,,' header or "
                                   f"columns {needed}; found {list(head.columns)}")
    boxes = pd.read_csv(path, dtype={"image": str, "label": str})[needed]
    coords = boxes[["x", "y", "w", "h"]].apply(pd.to_numeric, errors="coerce")
    values = coords.to_numpy(float)
    bad = ~np.isfinite(values).all(axis=1) | (values[:, 2] <= 0) | (values[:, 3] <= 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise CSVFormatError(f"{path}:{row + 2}", "box is not four numbers with positive width and height")
    boxes[["x", "y", "w", "h"]] = coords
    boxes["frame"] = "pixels"
    return boxes


def map_to_model(boxes: pd.DataFrame, model_labels: Sequence[str],
                 classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Boxes whose class the model predicts, with the model's class name in ``target``.

    Args:
        boxes: From :func:`read_boxes`.
        model_labels: The model's classes (CheXpert names for a CheXpert model).
        classes: Keep only these (NIH or model names); default: every class that maps.
    """
    lowered = {str(name).lower(): str(name) for name in model_labels}

    def target(label: str) -> str | None:
        for candidate in (label, NIH_TO_CHEXPERT.get(label)):
            if candidate is not None and candidate.lower() in lowered:
                return lowered[candidate.lower()]
        return None

    out = boxes.copy()
    out["target"] = [target(str(label)) for label in out["label"]]
    out = out.dropna(subset=["target"])
    if classes:
        wanted = {str(c).lower() for c in classes}
        out = out[out["label"].str.lower().isin(wanted) | out["target"].str.lower().isin(wanted)]
    return out.reset_index(drop=True)


def index_images(folder: str | Path) -> dict[str, str]:
    """File name -> path of every image under ``folder`` (recursively; first one wins)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(folder, "image folder not found")
    found: dict[str, str] = {}
    for root, _, files in os.walk(folder):
        for name in sorted(files):
            if name.lower().endswith(IMAGE_SUFFIXES):
                found.setdefault(name, os.path.join(root, name))
    return found


def _to_pixels(boxes: pd.DataFrame, shape: tuple[int, int]) -> np.ndarray:
    """``(x0, y0, x1, y1)`` rows in the image's own pixels (NIH boxes: from the 1024 px frame)."""
    nih = (boxes["frame"] == "nih1024").to_numpy()
    sx = np.where(nih, shape[1] / NIH_IMAGE_SIZE[1], 1.0)
    sy = np.where(nih, shape[0] / NIH_IMAGE_SIZE[0], 1.0)
    x0, y0 = boxes["x"].to_numpy(float) * sx, boxes["y"].to_numpy(float) * sy
    return np.stack([x0, y0, x0 + boxes["w"].to_numpy(float) * sx, y0 + boxes["h"].to_numpy(float) * sy], axis=1)


def boxes_in_model_frame(boxes: pd.DataFrame, shape: tuple[int, int], size: int,
                         pad_square: bool = True) -> list[tuple[float, float, float, float]]:
    """``(x0, y0, x1, y1)`` of each box after padding to square and resizing to ``size``."""
    rows, cols = shape
    side = max(rows, cols)
    top, left = ((side - rows) // 2, (side - cols) // 2) if pad_square else (0, 0)
    sx, sy = (size / side, size / side) if pad_square else (size / cols, size / rows)
    return [((x0 + left) * sx, (y0 + top) * sy, (x1 + left) * sx, (y1 + top) * sy)
            for x0, y0, x1, y1 in _to_pixels(boxes, shape)]


# ----------------------------------------------------------------------------- scores


def pointing_game(cam: np.ndarray, mask: np.ndarray, tolerance: int = 0) -> bool:
    """True when the map's maximum lies in the mask or within ``tolerance`` pixels of it (a disc).

    A map that is zero everywhere has no peak: a miss.
    """
    if not np.any(cam > 0):
        return False
    if tolerance > 0:
        import cv2

        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tolerance + 1, 2 * tolerance + 1))
        mask = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)
    peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return bool(mask[peak])


def thresholded_iou(cam: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> float:
    """IoU of ``cam >= threshold`` with the mask."""
    region = cam >= threshold
    union = np.logical_or(region, mask).sum()
    return float(np.logical_and(region, mask).sum() / union) if union else float("nan")


def energy_in_box(cam: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map's mass inside the mask (NaN for an all-zero map)."""
    total = float(np.clip(cam, 0, None).sum())
    return float(np.clip(cam, 0, None)[mask].sum() / total) if total > 0 else float("nan")


def score_map(cam: np.ndarray, mask: np.ndarray, threshold: float = 0.5, tolerance: int = 0) -> dict[str, Any]:
    """All three scores plus the box's share of the image.

    Raises:
        InputError: Map and mask shapes differ, or the mask is empty.
    """
    if cam.shape != mask.shape:
        raise InputError(None, f"map {cam.shape} and box mask {mask.shape} differ in shape")
    if not mask.any():
        raise InputError(None, "the box covers no pixel of the model's input")
    return {"pointing_hit": pointing_game(cam, mask, tolerance), "iou": thresholded_iou(cam, mask, threshold),
            "energy_in_box": energy_in_box(cam, mask), "box_fraction": float(mask.mean())}


def wilson_ci(hits: int, n: int, alpha: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``hits / n`` (NaN for ``n = 0``)."""
    if n == 0:
        return float("nan"), float("nan")
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + alpha / 2))
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if hits == 0 else max(0.0, centre - half)     # exact ends (no rounding residue)
    high = 1.0 if hits == n else min(1.0, centre + half)
    return float(low), float(high)


def bootstrap_mean_ci(values: np.ndarray, n_boot: int = 1000, alpha: float = 0.95,
                      rng: np.random.Generator | None = None) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean (NaN with fewer than two finite values)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size < 2:
        return float("nan"), float("nan")
    rng = rng or np.random.default_rng(0)
    means = values[rng.integers(0, values.size, size=(n_boot, values.size))].mean(axis=1)
    tail = (1 - alpha) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def summarize(per_image: pd.DataFrame, alpha: float = 0.95, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per class: n, hit rate (Wilson CI), mean IoU and energy in box (bootstrap CIs)."""
    rng = np.random.default_rng(seed)
    rows = []
    for target, group in per_image.groupby("target", sort=True):
        hits, n = int(group["pointing_hit"].sum()), len(group)
        row = {"class": target, "box_label": ", ".join(sorted(group["label"].unique())), "n": n,
               "pointing_hit_rate": hits / n if n else float("nan")}
        row["pointing_ci_low"], row["pointing_ci_high"] = wilson_ci(hits, n, alpha)
        for name in ("iou", "energy_in_box"):
            row[f"{name}_mean"] = float(group[name].mean())
            low_high = bootstrap_mean_ci(group[name].to_numpy(), n_boot, alpha, rng)
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = low_high
        row["n_empty_maps"] = int(group["energy_in_box"].isna().sum())
        row["box_fraction_mean"] = float(group["box_fraction"].mean())
        row["probability_mean"] = float(group["probability"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- driver


@dataclass
class Localization:
    """Output of :func:`localize`: per (image, class) scores, per-class summary, skips."""

    per_image: pd.DataFrame
    summary: pd.DataFrame
    skipped: SkipLog


def prepared_input(path: str | Path, meta: dict[str, Any], boxes: pd.DataFrame):
    """One image and its boxes prepared for a checkpoint.

    Returns:
        ``(picture, tensor, mask, model_boxes)``: the preprocessed uint8 image, the
        model's input tensor, the union of the boxes as a bool mask at the input size
        (through the same padding and resize as the image), and the boxes in input pixels.
    """
    pixels = read_image(path).pixels
    cfg = PreprocessConfig.from_dict(meta["preprocessing"])
    corners = _to_pixels(boxes, pixels.shape)
    original = boxes_mask(pixels.shape, corners[:, 0], corners[:, 1], corners[:, 2], corners[:, 3])
    picture, mask = preprocess(pixels, cfg, mask=original)
    tensor = to_tensor(picture, channels=int(meta["in_chans"]), normalization=meta["normalization"])
    return picture, tensor, mask, boxes_in_model_frame(boxes, pixels.shape, cfg.size, cfg.pad_square)


def localize(checkpoint: str | Path, boxes_path: str | Path, images_dir: str | Path,
             out_dir: str | Path | None = None, method: str = "gradcam", threshold: float = 0.5,
             tolerance: int = 0, classes: Sequence[str] | None = None, overlays: bool = True,
             on_error: str = "skip", alpha: float = 0.95, n_boot: int = 1000, seed: int = 0) -> Localization:
    """Score a checkpoint's CAMs against boxes, per image and class.

    Args:
        checkpoint: A ``.pt`` checkpoint or a run directory.
        boxes_path: ``BBox_List_2017.csv`` (or a plain box CSV, see :func:`read_boxes`).
        images_dir: Folder searched (recursively) for the boxed images by file name.
        out_dir: Writes ``localization_per_image.csv``, ``localization_summary.csv`` and,
            with ``overlays``, ``overlays/<image>__<class>.png`` (map + box). None: no files.
        method: CAM method (:data:`cxrlab.explain.cam.CAM_METHODS`).
        threshold: Map level for the IoU region.
        tolerance: Pointing-game tolerance in input pixels.
        classes: Restrict to these classes (NIH or model names).
        overlays: Write overlay PNGs.
        on_error: ``skip`` (default: images missing from ``images_dir`` or unreadable are
            counted and left out) or ``raise``.
        alpha, n_boot, seed: Confidence level, bootstrap replicates, and their seed.

    Raises:
        ConfigError: No box maps to the model's classes, or no boxed image was found.
    """
    from cxrlab.explain.cam import heatmap
    predictor = ClassifierPredictor.from_run_dir(checkpoint)
    model, meta = predictor.model, predictor.meta
    labels = list(meta["labels"])
    boxes = map_to_model(read_boxes(boxes_path), labels, classes)
    if boxes.empty:
        raise ConfigError(boxes_path, f"no box of a class the model predicts ({', '.join(labels)})"
                                      + (f" among {list(classes)}" if classes else ""))
    found = index_images(images_dir)
    skips = SkipLog(on_error)
    out = Path(out_dir) if out_dir is not None else None
    rows = []
    for image, per_image in boxes.groupby("image", sort=True):
        if image not in found:
            skips.handle(MissingFileError(Path(images_dir) / image, "boxed image not found under the image "
                                                                    "folder"))
            continue
        for target, group in per_image.groupby("target", sort=True):
            try:
                picture, tensor, mask, model_boxes = prepared_input(found[image], meta, group)
                result = heatmap(model, tensor, target, method, labels, display=picture, boxes=model_boxes,
                                 with_png=overlays and out is not None)
                scores = score_map(result.map, mask, threshold, tolerance)
            except InputError as err:
                skips.handle(err)
                continue
            stem = f"{Path(image).stem}__{target.replace(' ', '_')}"
            if result.overlay_png:
                atomic_write(out / "overlays" / f"{stem}.png",
                             lambda tmp, data=result.overlay_png: tmp.write_bytes(data))
            rows.append({"image": image, "label": group["label"].iloc[0], "target": target,
                         "n_boxes": len(group), "probability": result.probability,
                         "feature_h": result.feature_size[0], "feature_w": result.feature_size[1], **scores})
    if not rows:
        raise ConfigError(images_dir, f"none of the {boxes['image'].nunique()} boxed images could be scored "
                                      f"({skips.count} skipped); is this the folder holding them?")
    per_image = pd.DataFrame(rows)
    summary = summarize(per_image, alpha=alpha, n_boot=n_boot, seed=seed)
    if out is not None:
        atomic_write_text(out / "localization_per_image.csv", per_image.to_csv(index=False))
        atomic_write_text(out / "localization_summary.csv", summary.to_csv(index=False))
    return Localization(per_image, summary, skips)
