"""BraTS Dice / HD95 on hand-made volumes with anisotropic spacing, and the empty-region conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxrlab.metrics.brats import EMPTY_HD95, BratsMetric, aggregate, case_scores, dice_score, hd95

SPACING = (1.0, 1.0, 3.0)


def volume(*points: tuple[int, int, int], shape=(12, 12, 12)) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    for p in points:
        out[p] = True
    return out


def test_single_voxels_anisotropic():
    truth = volume((5, 5, 5))
    # two slices apart along z at 3 mm: 6 mm both ways
    assert hd95(volume((5, 5, 7)), truth, SPACING) == pytest.approx(6.0)
    # one voxel along x and one along z: sqrt(1^2 + 3^2)
    assert hd95(volume((6, 5, 6)), truth, SPACING) == pytest.approx(math.sqrt(10.0), rel=1e-6)
    # the same offset is 3x smaller in mm at isotropic 1 mm along z
    assert hd95(volume((5, 5, 7)), truth, (1.0, 1.0, 1.0)) == pytest.approx(2.0)


def test_percentile_and_dice_by_hand():
    truth = volume((5, 5, 5))
    pred = volume((5, 5, 5), (7, 5, 5))
    # pred -> truth distances {0, 2}; the 95th percentile (linear) is 0.95 * 2; truth -> pred {0}
    assert hd95(pred, truth, SPACING) == pytest.approx(1.9, rel=1e-6)
    assert dice_score(pred, truth) == pytest.approx(2 * 1 / 3)


def test_slabs_shifted_along_the_coarse_axis():
    truth = np.zeros((10, 10, 10), bool)
    truth[2:8, 2:8, 3:6] = True
    pred = np.zeros_like(truth)
    pred[2:8, 2:8, 4:7] = True        # shifted by one 3 mm slice
    assert dice_score(pred, truth) == pytest.approx(2 * 36 * 2 / (108 + 108))
    # every boundary voxel of either slab lies at most one slice (3 mm) from the other's boundary,
    # and the top/bottom faces (> 5 % of the boundary) lie exactly one slice away
    assert hd95(pred, truth, SPACING) == pytest.approx(3.0)


def test_empty_conventions():
    empty, full = volume(), volume((3, 3, 3))
    assert dice_score(empty, empty) == 1.0 and hd95(empty, empty, SPACING) == 0.0
    assert dice_score(full, empty) == 0.0 and hd95(full, empty, SPACING) == EMPTY_HD95
    assert dice_score(empty, full) == 0.0 and hd95(empty, full, SPACING) == EMPTY_HD95


def test_case_scores_and_aggregation():
    truth = {"WT": volume((5, 5, 5), (5, 5, 6)), "TC": volume((5, 5, 5)), "ET": volume()}
    pred = {"WT": volume((5, 5, 5), (5, 5, 6)), "TC": volume((5, 5, 7)), "ET": volume((1, 1, 1))}
    scores = case_scores(pred, truth, SPACING)
    assert scores["WT"] == {"dice": 1.0, "hd95": 0.0}
    assert scores["TC"] == {"dice": 0.0, "hd95": pytest.approx(6.0)}
    assert scores["ET"] == {"dice": 0.0, "hd95": EMPTY_HD95}
    metric = BratsMetric()
    metric.update("a", pred, truth, SPACING)
    metric.update("b", truth, truth, SPACING)
    metric.update("c", truth, truth, SPACING)
    summary = metric.aggregate()
    assert summary["mean"]["TC"]["dice"] == pytest.approx(2 / 3)
    assert summary["median"]["TC"]["dice"] == 1.0
    assert summary["mean"]["ET"]["hd95"] == pytest.approx(EMPTY_HD95 / 3)
    assert aggregate(metric.cases, "median")["ET"]["hd95"] == 0.0
    with pytest.raises(ValueError):
        aggregate({}, "mean")
