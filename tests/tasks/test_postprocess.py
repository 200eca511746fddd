"""Post-processing: argmax, threshold search, flip TTA, small components, triplet, gate, restore."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrlab.data.transforms import PreprocessConfig, preprocess
from cxrlab.errors import ConfigError, InputError
from cxrlab.metrics.segmentation import get_stats, mean_dice_per_image
from cxrlab.models.segmentation import foreground_probability
from cxrlab.inference.postprocess import (THRESHOLDS, Postprocess, SearchGrids, apply_gate, argmax_masks,
                                          gate_candidates, gate_operating_point, hflip_tta,
                                          remove_small_components, restore_mask, threshold_counts,
                                          threshold_masks, triplet_masks, tune)


def _problem(seed: int = 0, n: int = 10):
    """Probabilities whose foreground sits at 0.3-0.6 and background at 0-0.35 (overlapping)."""
    rng = np.random.default_rng(seed)
    truths = np.zeros((n, 12, 12), dtype=bool)
    for i in range(0, n, 2):                      # every other image has a square finding
        y, x = rng.integers(0, 7, size=2)
        truths[i, y:y + 5, x:x + 5] = True
    probs = np.where(truths, rng.uniform(0.3, 0.6, truths.shape), rng.uniform(0.0, 0.35, truths.shape))
    return probs.astype(np.float32), truths


def _dice(masks, truths):
    tp, fp, fn, _ = get_stats(masks, truths)
    return mean_dice_per_image(tp, fp, fn)


def test_argmax_of_two_channels_is_the_half_threshold():
    logits = torch.randn(4, 2, 9, 9)
    masks = argmax_masks(logits)
    assert masks.dtype == bool and masks.shape == (4, 9, 9)
    assert np.array_equal(masks, threshold_masks(foreground_probability(logits), 0.5))
    assert np.array_equal(argmax_masks(logits[:, :1]), logits[:, 0].numpy() > 0)


def test_threshold_counts_equal_brute_force_counts():
    probs, truths = _problem()
    probs[0, 0, :3] = np.float32(0.3)            # values exactly on a threshold
    tp, fp, fn = threshold_counts(probs, truths, THRESHOLDS, chunk=3)
    for k, t in enumerate(THRESHOLDS):
        expected = get_stats(threshold_masks(probs, t), truths)
        assert np.array_equal(tp[k], expected[0]) and np.array_equal(fp[k], expected[1])
        assert np.array_equal(fn[k], expected[2])


def test_threshold_search_finds_the_best_threshold_of_the_grid():
    probs, truths = _problem(1)
    tuned = tune("threshold", probs, truths)
    brute = [_dice(threshold_masks(probs, t), truths) for t in THRESHOLDS]
    assert tuned.score == pytest.approx(max(brute))
    assert brute[int(np.argmin(np.abs(THRESHOLDS - tuned.postprocess.threshold)))] == pytest.approx(max(brute))
    assert 0.25 <= tuned.postprocess.threshold < 0.45
    assert tuned.score > _dice(threshold_masks(probs, 0.5), truths)      # better than argmax here


def test_ties_go_to_the_middle_of_the_plateau():
    truths = np.zeros((2, 4, 4), dtype=bool)
    truths[0, :2, :2] = True
    probs = np.where(truths, 0.9, 0.1).astype(np.float32)       # every t in [0.1, 0.9) is perfect
    tuned = tune("threshold", probs, truths)
    assert tuned.score == 1.0 and 0.48 <= tuned.postprocess.threshold <= 0.51   # plateau 0.10-0.89


def test_flip_tta_unflips_its_second_prediction():
    ramp = torch.linspace(0, 1, 8).expand(1, 1, 8, 8)

    def position_only(images):                   # ignores the image: not flip-equivariant
        return ramp.expand(images.shape[0], 1, 8, 8)

    images = torch.zeros(2, 1, 8, 8)
    averaged = hflip_tta(position_only, images)
    assert torch.allclose(averaged, torch.full_like(averaged, 0.5))   # ramp + mirrored ramp

    images[:, :, 2:5, 0:3] = 4.0                 # a finding on the left

    def pixelwise(x):
        return torch.sigmoid(x)

    result = hflip_tta(pixelwise, images)
    assert torch.allclose(result, pixelwise(images))                  # equivariant model: unchanged
    assert result[0, 0, 3, 1] > 0.9 and result[0, 0, 3, 6] < 0.6      # still on the left


def test_small_components_are_removed():
    mask = np.zeros((10, 10), dtype=bool)
    mask[0:2, 0:2] = True                         # 4 px
    mask[5:9, 5:9] = True                         # 16 px
    mask[2, 2] = True                             # touches the first diagonally: 5 px with 8-connectivity
    kept = remove_small_components(mask, 6)
    assert kept[5:9, 5:9].all() and kept.sum() == 16
    assert remove_small_components(mask, 5).sum() == 21
    assert np.array_equal(remove_small_components(mask[None], 0)[0], mask)


def test_triplet_needs_enough_confident_pixels():
    probs = np.full((2, 6, 6), 0.1, dtype=np.float32)
    probs[0, :3, :1] = 0.95                       # 3 confident pixels
    probs[0, :3, 1:3] = 0.45
    probs[1, :3, :2] = 0.95                       # 6 confident pixels
    probs[1, 3, :2] = 0.45
    masks = triplet_masks(probs, top_threshold=0.9, min_area=5, pixel_threshold=0.4)
    assert not masks[0].any()
    assert masks[1].sum() == 8 and masks[1, 3, :2].all()


def test_the_gate_empties_exactly_the_gated_negative_masks():
    rng = np.random.default_rng(2)
    masks = rng.random((6, 5, 5)) > 0.5
    gate = np.array([0.9, 0.1, 0.5, 0.49, 0.7, 0.0])
    gated = apply_gate(masks, gate, 0.5)
    negative = gate < 0.5
    assert not gated[negative].any()
    assert np.array_equal(gated[~negative], masks[~negative])
    assert masks[negative].any()                  # the input was not modified
    post = Postprocess(method="threshold", threshold=0.5, gate_threshold=0.5)
    probs = rng.random((6, 5, 5)).astype(np.float32)
    assert np.array_equal(post.masks(probs, gate), apply_gate(probs > 0.5, gate, 0.5))
    with pytest.raises(InputError, match="gate probabilities"):
        post.masks(probs)


def test_cascade_tuning_searches_gate_and_pixel_thresholds_jointly():
    probs, truths = _problem(3)
    probs[1::2] = np.maximum(probs[1::2], 0.55 * (np.random.default_rng(4).random(probs[1::2].shape) > 0.7))
    has_finding = truths.reshape(len(truths), -1).any(axis=1)
    gate = np.where(has_finding, 0.8, 0.3)
    grids = SearchGrids(gate_thresholds=(0.2, 0.5, 0.9))
    tuned = tune("threshold", probs, truths, grids, gate_probs=gate)
    assert tuned.postprocess.gate_threshold == 0.5
    best = max(_dice(apply_gate(threshold_masks(probs, t), gate, g), truths)
               for t in THRESHOLDS for g in grids.gate_thresholds)
    assert tuned.score == pytest.approx(best)
    assert tuned.score > tune("threshold", probs, truths).score       # the gate removes false positives
    # default (seed 002, Algorithm 1): the classifier's own decision, probability >= 0.5
    decided = tune("threshold", probs, truths, gate_probs=gate)
    assert decided.postprocess.gate_threshold == 0.5 and decided.score == pytest.approx(tuned.score)
    # a badly calibrated gate (every probability below 0.05): its decision empties every
    # mask, while Youden's operating point and the joint search find the separating cut
    shy = np.where(has_finding, 0.03, 0.01) + np.linspace(0, 0.001, len(gate))
    assert tune("threshold", probs, truths, gate_probs=shy).score == pytest.approx(0.5)    # negatives only
    for rule in ("youden", "search"):
        calibrated_free = tune("threshold", probs, truths, SearchGrids(gate_rule=rule), gate_probs=shy)
        assert 0.011 < calibrated_free.postprocess.gate_threshold < 0.03
        assert calibrated_free.score == pytest.approx(tuned.score)
    assert gate_candidates(shy).size == np.unique(shy).size + 1
    assert gate_candidates(np.linspace(0, 1, 500), limit=10).size == 10
    with pytest.raises(ConfigError, match="gate_rule"):
        SearchGrids(gate_rule="median")


def test_gate_operating_point_maximises_youden_with_a_margin():
    y = np.array([0, 0, 0, 1, 1, 1], dtype=bool)
    assert gate_operating_point(y, [0.01, 0.02, 0.03, 0.2, 0.6, 0.9]) == pytest.approx((0.03 + 0.2) / 2)
    overlap = [0.1, 0.5, 0.3, 0.4, 0.6, 0.9]             # J is best (2/3) cutting at 0.45 or 0.55
    cut = gate_operating_point(y, overlap)
    sens = np.mean(np.array(overlap)[y] >= cut)
    spec = np.mean(np.array(overlap)[~y] < cut)
    assert sens + spec - 1 == pytest.approx(2 / 3)
    assert gate_operating_point(np.ones(3, bool), [0.2, 0.5, 0.7]) < 0.2    # one class: keep every mask


def test_triplet_tuning_matches_brute_force():
    probs, truths = _problem(5)
    grids = SearchGrids(top_thresholds=(0.4, 0.5, 0.55), triplet_area_fractions=(0.0, 0.02, 0.05),
                        pixel_thresholds=(0.25, 0.3, 0.35))
    tuned = tune("triplet", probs, truths, grids, tta=True)
    area = 12 * 12
    brute = max(_dice(triplet_masks(probs, top, int(round(f * area)), pix), truths)
                for top in grids.top_thresholds for f in grids.triplet_area_fractions
                for pix in grids.pixel_thresholds)
    assert tuned.score == pytest.approx(brute)
    post = tuned.postprocess
    assert post.method == "triplet" and post.tta
    assert _dice(post.masks(probs), truths) == pytest.approx(tuned.score)


def test_min_area_is_tuned_when_asked():
    probs, truths = _problem(6)
    probs[1, 0, 0] = 0.99                         # an isolated false positive on an empty image
    grids = SearchGrids(min_area_fractions=(0.0, 0.05))
    tuned = tune("threshold", probs, truths, grids)
    assert tuned.postprocess.min_area == int(round(0.05 * 144))
    assert tuned.score >= tune("threshold", probs, truths).score


def test_restore_mask_undoes_padding_and_resizing():
    rng = np.random.default_rng(7)
    pixels = rng.random((40, 80)).astype(np.float32)
    mask = np.zeros((40, 80), dtype=bool)
    mask[10:30, 50:70] = True
    _, small = preprocess(pixels, PreprocessConfig(size=80, clip_percentiles=None), mask)
    assert np.array_equal(restore_mask(small, (40, 80)), mask)
    _, smaller = preprocess(pixels, PreprocessConfig(size=40, clip_percentiles=None), mask)
    restored = restore_mask(smaller, (40, 80))
    assert restored.shape == (40, 80) and (restored == mask).mean() > 0.97


def test_bad_grids_and_methods_raise():
    probs, truths = _problem()
    with pytest.raises(ConfigError, match="increasing"):
        threshold_counts(probs, truths, [0.5, 0.2])
    with pytest.raises(ConfigError, match="method"):
        Postprocess(method="median")
    with pytest.raises(InputError, match="shape"):
        threshold_counts(probs, truths[:, :5])
