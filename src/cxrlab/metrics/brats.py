"""BraTS segmentation scores: Dice and HD95 per tumour region, in millimetres.

The pure functions take boolean region masks (``WT``, ``TC``, ``ET``; see
:func:`cxrlab.data.datasets.brats.region_masks`) on one voxel grid and its spacing.
HD95 is MONAI's :func:`monai.metrics.compute_hausdorff_distance` with ``percentile=95``:
the larger of the two directed 95th percentiles of the distances between the masks'
boundary voxels, in millimetres from the spacing.

Empty regions follow the BraTS evaluation: both empty -> Dice 1, HD95 0; exactly one
empty -> Dice 0, HD95 :data:`EMPTY_HD95` (373.13 mm, the diagonal of the 240 x 240 x 155
mm BraTS volume).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

EMPTY_HD95 = 373.13
"""HD95 (mm) when exactly one of prediction and reference is empty (BraTS convention)."""

REGIONS = ("WT", "TC", "ET")


def dice_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty (BraTS)."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    total = int(pred.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, truth).sum()) / total


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance in mm (MONAI), with the BraTS empty conventions.

    Args:
        pred, truth: Boolean masks of one shape.
        spacing: Voxel size in mm per axis.
    """
    from monai.metrics import compute_hausdorff_distance

    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and reference {truth.shape} differ in shape")
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if not has_pred and not has_truth:
        return 0.0
    if has_pred != has_truth:
        return EMPTY_HD95
    with warnings.catch_warnings():     # MONAI 1.5+ warns about its own deprecated internal argument
        warnings.simplefilter("ignore", FutureWarning)
        value = compute_hausdorff_distance(pred[None, None], truth[None, None], include_background=True,
                                           percentile=95, spacing=[float(s) for s in spacing])
    return float(value.reshape(-1)[0])


def region_scores(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float],
                  with_hd95: bool = True) -> dict[str, float]:
    """``{"dice": ..., "hd95": ...}`` of one region (``hd95`` left out when ``with_hd95`` is False)."""
    scores = {"dice": dice_score(pred, truth)}
    if with_hd95:
        scores["hd95"] = hd95(pred, truth, spacing)
    return scores


def case_scores(pred_regions: Mapping[str, np.ndarray], truth_regions: Mapping[str, np.ndarray],
                spacing: Sequence[float], with_hd95: bool = True) -> dict[str, dict[str, float]]:
    """Scores of every region of one case: ``{"WT": {"dice", "hd95"}, "TC": ..., "ET": ...}``."""
    return {name: region_scores(pred_regions[name], truth_regions[name], spacing, with_hd95) for name in REGIONS
            if name in truth_regions}


def aggregate(cases: Mapping[str, Mapping[str, Mapping[str, float]]], how: str = "mean") -> dict[str, dict[str, float]]:
    """Mean or median over cases of each region's scores (``how``: ``mean`` or ``median``).

    Raises:
        ValueError: Unknown ``how`` or no cases.
    """
    if how not in ("mean", "median"):
        raise ValueError(f"how must be 'mean' or 'median', got {how!r}")
    if not cases:
        raise ValueError("no cases to aggregate")
    reduce = np.mean if how == "mean" else np.median
    first = next(iter(cases.values()))
    out: dict[str, dict[str, float]] = {}
    for region, metrics in first.items():
        out[region] = {key: float(reduce([c[region][key] for c in cases.values()])) for key in metrics}
    return out


class BratsMetric:
    """Accumulates per-case region scores (``update``), then ``aggregate()`` and ``reset()``.

    Args:
        with_hd95: Also compute HD95 (slower; validation during training may skip it).
    """

    def __init__(self, with_hd95: bool = True) -> None:
        self.with_hd95 = with_hd95
        self.cases: dict[str, dict[str, dict[str, float]]] = {}

    def update(self, name: str, pred_regions: Mapping[str, np.ndarray], truth_regions: Mapping[str, np.ndarray],
               spacing: Sequence[float]) -> dict[str, dict[str, float]]:
        scores = case_scores(pred_regions, truth_regions, spacing, self.with_hd95)
        self.cases[str(name)] = scores
        return scores

    def aggregate(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{"mean": {...}, "median": {...}}`` over the cases seen."""
        return {"mean": aggregate(self.cases, "mean"), "median": aggregate(self.cases, "median")}

    def reset(self) -> None:
        self.cases = {}
