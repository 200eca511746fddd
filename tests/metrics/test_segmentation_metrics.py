"""Segmentation metrics on hand-made masks (every empty/non-empty combination) and vs scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, jaccard_score, roc_auc_score

from cxrlab.errors import InputError
from cxrlab.metrics.segmentation import (dice_global, dice_per_image, gate_auroc, get_stats, image_confusion,
                                         iou_global, iou_per_image, mean_dice_per_image, score_masks,
                                         segmentation_summary)


def _masks():
    """Four 4x4 cases: both empty, truth only, prediction only, overlapping."""
    truth = np.zeros((4, 4, 4), dtype=bool)
    pred = np.zeros((4, 4, 4), dtype=bool)
    truth[1, :2, :2] = True            # truth non-empty, prediction empty
    pred[2, 3, 3] = True               # prediction non-empty, truth empty
    truth[3, :2, :2] = True            # 4 true pixels
    pred[3, :2, :1] = True             # 2 predicted, both inside
    pred[3, 3, 3] = True               # and 1 outside
    return pred, truth


def test_counts_of_hand_made_masks():
    tp, fp, fn, tn = get_stats(*_masks())
    assert tp.tolist() == [0, 0, 0, 2]
    assert fp.tolist() == [0, 0, 1, 1]
    assert fn.tolist() == [0, 4, 0, 2]
    assert (tp + fp + fn + tn).tolist() == [16] * 4


def test_dice_per_image_follows_the_competition_definition():
    tp, fp, fn, _ = get_stats(*_masks())
    scores = dice_per_image(tp, fp, fn)
    # both empty = 1; truth only = 0; prediction on an empty truth = 0; 2*2/(4+1+2)
    assert scores.tolist() == pytest.approx([1.0, 0.0, 0.0, 4 / 7])
    assert mean_dice_per_image(tp, fp, fn) == pytest.approx((1 + 4 / 7) / 4)
    assert iou_per_image(tp, fp, fn).tolist() == pytest.approx([1.0, 0.0, 0.0, 2 / 5])


def test_global_dice_and_iou_pool_all_pixels():
    pred, truth = _masks()
    tp, fp, fn, _ = get_stats(pred, truth)
    assert dice_global(tp, fp, fn) == pytest.approx(2 * 2 / (2 * 2 + 2 + 6))
    assert iou_global(tp, fp, fn) == pytest.approx(2 / (2 + 2 + 6))
    with pytest.warns(RuntimeWarning, match="undefined"):
        assert np.isnan(dice_global([0], [0], [0]))


def test_image_confusion_counts_empty_and_non_empty_masks():
    tp, fp, fn, _ = get_stats(*_masks())
    assert image_confusion(tp, fp, fn) == {"tp": 1, "fp": 1, "fn": 1, "tn": 1}
    summary = segmentation_summary(tp, fp, fn)
    assert summary["fp_masks_on_empty"] == 1
    assert summary["n_images"] == 4 and summary["n_positive"] == 2


def test_metrics_match_scikit_learn_on_random_masks():
    rng = np.random.default_rng(0)
    truth = rng.random((12, 16, 16)) < 0.2
    pred = rng.random((12, 16, 16)) < 0.25
    truth[:3] = False                                   # some empty truths
    pred[2:5] = False                                   # some empty predictions
    tp, fp, fn, _ = get_stats(pred, truth)
    flat_t, flat_p = truth.ravel(), pred.ravel()
    assert dice_global(tp, fp, fn) == pytest.approx(f1_score(flat_t, flat_p))
    assert iou_global(tp, fp, fn) == pytest.approx(jaccard_score(flat_t, flat_p))
    per_image = [f1_score(t.ravel(), p.ravel(), zero_division=1.0) for t, p in zip(truth, pred)]
    assert dice_per_image(tp, fp, fn) == pytest.approx(per_image)
    assert score_masks(pred, truth)["dice_per_image"] == pytest.approx(np.mean(per_image))


def test_gate_auroc_uses_the_classification_auroc():
    y = np.array([0, 0, 1, 1, 0, 1])
    p = np.array([0.1, 0.6, 0.4, 0.9, 0.2, 0.8])
    assert gate_auroc(y, p) == pytest.approx(roc_auc_score(y, p))
    with pytest.warns(UserWarning):
        assert np.isnan(gate_auroc([1, 1], [0.2, 0.3]))


def test_bad_shapes_raise_input_errors():
    with pytest.raises(InputError, match="differ in shape"):
        get_stats(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(InputError, match="masks"):
        get_stats(np.zeros(5), np.zeros(5))
    with pytest.raises(InputError, match="non-negative"):
        dice_per_image([-1], [0], [0])
