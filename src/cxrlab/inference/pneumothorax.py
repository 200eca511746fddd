"""Pneumothorax prediction: U-Net masks with the run's tuned post-processing, gated by the
classifier in the cascade, mapped back onto the source image; mask/RLE export."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from cxrlab.config.pneumothorax import MODELS
from cxrlab.errors import ConfigError, MissingFileError
from cxrlab.utils import atomic_write_text

log = logging.getLogger(__name__)


GATE_CHECKPOINTS = {"auroc": "best_auroc.pt", "loss": "best_loss.pt"}
"""The gate recipe's ``train.monitor`` -> the classification run's checkpoint the cascade uses."""


def gate_checkpoint(run_dir: str | Path) -> Path:
    """The gate checkpoint of a pneumothorax run, picked by the gate recipe's ``train.monitor``.

    ``auroc`` (default, seed 002) -> ``gate/best_auroc.pt``; ``loss`` -> ``gate/best_loss.pt``.
    On a small validation fold the gate's AUROC saturates at 1.0 within a few epochs, so
    the first epoch to reach it would be kept; the validation loss keeps ranking them.

    Raises:
        MissingFileError: The run has no trained gate.
    """
    gate_dir = Path(run_dir) / "gate"
    config = gate_dir / "config.yaml"
    monitor = "auroc"
    if config.is_file():
        raw = yaml.safe_load(config.read_text()) or {}
        monitor = str((raw.get("train") or {}).get("monitor", "auroc"))
    path = gate_dir / GATE_CHECKPOINTS.get(monitor, GATE_CHECKPOINTS["auroc"])
    if not path.is_file():
        raise MissingFileError(path, "the run has no gate checkpoint; did the gate's training finish?")
    return path


@dataclass
class MaskPrediction:
    """One predicted image: its mask in source orientation and size, and the gate's say."""

    path: str
    image_id: str
    mask: np.ndarray
    pixels: np.ndarray
    gate_probability: float | None


def choose_postprocess(run_dir: Path, model: str, row: str | None = None) -> tuple[str, Any]:
    """The tuned post-processing of ``model`` (``row``, or the best validation score)."""
    from cxrlab.inference.postprocess import Postprocess

    path = Path(run_dir) / "postprocess.json"
    if not path.is_file():
        raise MissingFileError(path, "no tuned post-processing; run `cxrlab seg evaluate` first")
    tuned = json.loads(path.read_text()).get(model)
    if not tuned:
        raise ConfigError("--model", f"run {run_dir} has no {model!r} model; it has "
                                     f"{sorted(json.loads(path.read_text()))}")
    if row is None:
        row = max(tuned, key=lambda r: tuned[r]["valid_score"])
    if row not in tuned:
        raise ConfigError("--postprocess", f"row {row!r} was not tuned; choose from {sorted(tuned)}")
    values = {k: v for k, v in tuned[row].items() if k != "valid_score"}
    return row, Postprocess.from_dict(values)


@torch.no_grad()
def predict_masks(run_dir: str | Path, paths: Sequence[str | Path], model: str = "cascade",
                  row: str | None = None, batch_size: int = 8) -> list[MaskPrediction]:
    """Masks for images (DICOM/PNG/JPEG) with a run's model and tuned post-processing.

    Each image is preprocessed as the U-Net's training data was, predicted (with flip
    TTA when the post-processing asks for it), post-processed, gated (cascade) and
    mapped back onto the source image (padding removed, source size).
    """
    from cxrlab.data.transforms import PreprocessConfig, preprocess, to_tensor
    from cxrlab.inference.classifier import predict_images
    from cxrlab.inference.postprocess import hflip_tta, restore_mask
    from cxrlab.io import read_image
    from cxrlab.models.segmentation import (
        foreground_probability,
        load_segmentation_checkpoint,
    )

    run_dir = Path(run_dir)
    if model not in MODELS:
        raise ConfigError("--model", f"unknown model {model!r}; choose from {MODELS}")
    _, post = choose_postprocess(run_dir, model, row)
    unet, meta = load_segmentation_checkpoint(run_dir / ("baseline" if model == "baseline" else "one_case") / "best.pt")
    pcfg = PreprocessConfig.from_dict(meta["preprocessing"])
    gates = None
    if model == "cascade":
        gates = predict_images(gate_checkpoint(run_dir), list(paths))["prob_Pneumothorax"].to_numpy()

    def probability(images: torch.Tensor) -> torch.Tensor:
        return foreground_probability(unet(images))

    out: list[MaskPrediction] = []
    for start in range(0, len(paths), batch_size):
        chunk = [read_image(p) for p in paths[start:start + batch_size]]
        x = torch.stack([to_tensor(preprocess(img.pixels, pcfg), channels=meta["in_chans"],
                                   normalization=meta["normalization"]) for img in chunk])
        probs = hflip_tta(probability, x) if post.tta else probability(x)
        gate = None if gates is None else gates[start:start + len(chunk)]
        masks = post.masks(probs[:, 0].numpy(), gate)
        for j, img in enumerate(chunk):
            path = str(paths[start + j])
            out.append(MaskPrediction(
                path=path, image_id=img.meta.sop_instance_uid or Path(path).stem,
                mask=restore_mask(masks[j], img.pixels.shape, pcfg.pad_square), pixels=img.pixels,
                gate_probability=None if gate is None else float(gate[j])))
    return out


def write_rle_csv(path: str | Path, rows: Sequence[tuple[str, str]]) -> Path:
    """Kaggle SIIM CSV (``ImageId,EncodedPixels``, one row per region, ``-1`` = empty), atomically."""
    lines = ["ImageId,EncodedPixels"] + [f"{image_id},{rle}" for image_id, rle in rows]
    return atomic_write_text(path, "\n".join(lines) + "\n")


def export_predictions(predictions: Sequence[MaskPrediction], out: str | Path, rle: bool = False) -> dict[str, Path]:
    """Write ``masks/<stem>.png`` (0/255), ``overlays/<stem>.png`` (mask in red),
    ``predictions.csv`` and, with ``rle``, the Kaggle ``submission.csv``."""
    import cv2
    import pandas as pd

    from cxrlab.data.transforms import minmax_scale
    from cxrlab.io import write_png
    from cxrlab.io.rle import rle_encode
    from cxrlab.io.write import write_bytes_atomic

    out = Path(out)
    records = []
    for pred in predictions:
        stem = Path(pred.path).stem
        write_png(out / "masks" / f"{stem}.png", pred.mask)
        gray = np.rint(minmax_scale(pred.pixels) * 255).astype(np.uint8)
        overlay = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
        overlay[pred.mask] = (0.5 * overlay[pred.mask] + np.array([0, 0, 127])).astype(np.uint8)
        ok, encoded = cv2.imencode(".png", overlay)
        if ok:
            write_bytes_atomic(out / "overlays" / f"{stem}.png", encoded.tobytes())
        records.append({"path": pred.path, "image_id": pred.image_id, "gate_probability": pred.gate_probability,
                        "mask_pixels": int(pred.mask.sum()), "has_mask": bool(pred.mask.any())})
    files = {"masks": out / "masks", "overlays": out / "overlays", "predictions": out / "predictions.csv"}
    atomic_write_text(files["predictions"], pd.DataFrame.from_records(records).to_csv(index=False))
    if rle:
        files["rle"] = write_rle_csv(out / "submission.csv", [(p.image_id, rle_encode(p.mask)) for p in predictions])
    return files
