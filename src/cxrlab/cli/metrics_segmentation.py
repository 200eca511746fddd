"""``cxrlab metrics segmentation``: score predicted masks against true masks (PNG folders)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from cxrlab.cli.errors import user_errors
from cxrlab.errors import ImageReadError, InputError, MissingFileError

MASK_SUFFIXES = (".png",)


def _pngs(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise MissingFileError(folder, f"{what} folder not found")
    files = {p.name: p for p in sorted(folder.iterdir()) if p.suffix.lower() in MASK_SUFFIXES}
    if not files:
        raise MissingFileError(folder, f"no PNG masks in the {what} folder")
    return files


def read_prediction(path: Path, threshold: float) -> np.ndarray:
    """A predicted mask from a PNG: values scaled to [0, 1] by the bit depth, then ``> threshold``.

    A 0/255 binary mask and an 8- or 16-bit probability map both work.

    Raises:
        ImageReadError: Not a readable single-channel PNG.
    """
    import cv2

    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ImageReadError(path, "cannot read as a PNG image")
    if array.ndim == 3:
        raise ImageReadError(path, f"expected a single-channel mask, got {array.shape[2]} channels")
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(array.dtype, 1.0)
    return array.astype(np.float64) / scale > threshold


def score_mask_folders(pred_dir: Path, truth_dir: Path, threshold: float = 0.5) -> dict:
    """Dice per image, global Dice/IoU and the image-level confusion of two PNG folders.

    Files are matched by name; every prediction needs a truth and vice versa.

    Raises:
        MissingFileError: A folder is missing or empty, or a file has no counterpart.
        InputError: A pair of masks differs in size.
    """
    from cxrlab.io import read_mask
    from cxrlab.metrics.segmentation import get_stats, segmentation_summary

    preds, truths = _pngs(pred_dir, "prediction"), _pngs(truth_dir, "truth")
    for names, folder, other in ((set(preds) - set(truths), truth_dir, "truth"),
                                 (set(truths) - set(preds), pred_dir, "prediction")):
        if names:
            first = sorted(names)[0]
            raise MissingFileError(folder / first, f"no {other} mask named {first!r} "
                                                   f"({len(names)} file(s) without a counterpart)")
    counts = []
    for name in sorted(preds):
        pred = read_prediction(preds[name], threshold)
        truth = read_mask(truths[name])
        if pred.shape != truth.shape:
            raise InputError(preds[name], f"prediction {pred.shape} and truth {truth.shape} "
                                          f"({truths[name]}) differ in size")
        counts.append([int(c[0]) for c in get_stats(pred, truth)])
    tp, fp, fn, _ = np.asarray(counts, dtype=np.int64).T
    return segmentation_summary(tp, fp, fn)


def register_segmentation_metrics(app: typer.Typer) -> None:
    """Add ``segmentation`` to the ``cxrlab metrics`` sub-app."""

    @app.command("segmentation")
    @user_errors
    def segmentation(
        pred_dir: Path = typer.Option(..., "--pred-dir", help="Predicted masks or probability maps (PNG)."),
        truth_dir: Path = typer.Option(..., "--truth-dir", help="True masks (PNG, nonzero = inside)."),
        threshold: float = typer.Option(0.5, "--threshold", help="Foreground where prediction / max > threshold."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Dice per image (competition score), global Dice and IoU of PNG masks with matching names."""
        summary = score_mask_folders(pred_dir, truth_dir, threshold)
        if as_json:
            clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summary.items()}
            typer.echo(json.dumps(clean, indent=2))
            return
        table = Table(title=f"{pred_dir} vs {truth_dir}")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key in ("dice_per_image", "dice_global", "iou_global"):
            value = summary[key]
            table.add_row(key, "n/a" if math.isnan(value) else f"{value:.4f}")
        table.add_row("n_images", str(summary["n_images"]))
        table.add_row("n_positive", str(summary["n_positive"]))
        table.add_row("fp_masks_on_empty", str(summary["fp_masks_on_empty"]))
        Console().print(table)
