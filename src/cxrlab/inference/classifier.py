"""Predict images with a trained checkpoint, and compare two runs on the same cases."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxrlab.errors import ConfigError, InputError, MissingFileError, SkipLog

log = logging.getLogger(__name__)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory's ``best_auroc.pt``."""
    path = Path(path)
    if path.is_dir():
        path = path / "best_auroc.pt"
    if not path.is_file():
        raise MissingFileError(path, "checkpoint not found (give a .pt file or a run directory)")
    return path


def load_predictor(checkpoint: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Model in eval mode plus its metadata."""
    from cxrlab.models.weights import load_model_checkpoint

    model, meta = load_model_checkpoint(resolve_checkpoint(checkpoint))
    return model.eval(), meta


def image_tensor(path: str | Path, meta: dict[str, Any]) -> torch.Tensor:
    """Read and preprocess one image exactly as the checkpoint's training data was."""
    from cxrlab.data.transforms import PreprocessConfig, preprocess, to_tensor
    from cxrlab.io import read_image

    image = read_image(path)
    cfg = PreprocessConfig.from_dict(meta["preprocessing"])
    return to_tensor(preprocess(image.pixels, cfg), channels=meta["in_chans"],
                     normalization=meta["normalization"])


@torch.no_grad()
def predict_images(checkpoint: str | Path, paths: Sequence[str | Path], batch_size: int = 8,
                   on_error: str = "raise", skips: SkipLog | None = None) -> pd.DataFrame:
    """Per-image probabilities and decisions at the checkpoint's stored thresholds.

    Returns:
        One row per readable image: ``path``, ``prob_<label>`` and ``pred_<label>``.
        With ``on_error="skip"`` unreadable images are left out and recorded in
        ``skips``.
    """
    model, meta = load_predictor(checkpoint)
    labels: list[str] = list(meta["labels"])
    thresholds = meta.get("thresholds", {})
    skips = skips if skips is not None else SkipLog(on_error)
    rows: list[dict[str, Any]] = []
    kept: list[str] = []
    tensors: list[torch.Tensor] = []

    def flush() -> None:
        if not tensors:
            return
        probs = torch.sigmoid(model(torch.stack(tensors)).float()).numpy()
        for path, p in zip(kept, probs):
            row: dict[str, Any] = {"path": path}
            for k, name in enumerate(labels):
                row[f"prob_{name}"] = float(p[k])
                row[f"pred_{name}"] = int(p[k] >= float(thresholds.get(name, 0.5)))
            rows.append(row)
        kept.clear()
        tensors.clear()

    for path in paths:
        try:
            tensors.append(image_tensor(path, meta))
            kept.append(str(path))
        except InputError as err:
            skips.handle(err)
        if len(tensors) >= batch_size:
            flush()
    flush()
    columns = ["path"] + [f"{kind}_{n}" for n in labels for kind in ("prob", "pred")]
    return pd.DataFrame(rows, columns=columns)


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
    from cxrlab.metrics.classification import delong_paired_test

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


def iter_image_paths(items: Iterable[str | Path]) -> list[Path]:
    """Expand folders to the DICOM/PNG/JPEG files inside them (sorted)."""
    suffixes = {".dcm", ".dicom", ".png", ".jpg", ".jpeg"}
    paths: list[Path] = []
    for item in items:
        item = Path(item)
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.suffix.lower() in suffixes)
        else:
            paths.append(item)
    return paths
