"""Segmentation losses: each against a reference computation, its reductions, and its gradient's sign."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from cxrlab.errors import ConfigError, InputError
from cxrlab.losses.segmentation import SEGMENTATION_LOSSES, create_segmentation_loss


def _toy(seed: int = 0, empty_second: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 1, 6, 6, generator=gen)
    target = torch.zeros(3, 1, 6, 6)
    target[0, 0, 1:4, 1:4] = 1
    target[1, 0, 0:2, 3:6] = 1
    target[2, 0, 4:6, 0:5] = 1
    if empty_second:
        target[1] = 0
    return logits, target


def _soft_counts(logits, target, per_image):
    p = torch.sigmoid(logits).reshape(logits.shape[0], -1)
    y = target.reshape(target.shape[0], -1)
    dims = 1 if per_image else None
    tp = (p * y).sum(dim=dims) if dims else (p * y).sum()
    fp = (p * (1 - y)).sum(dim=dims) if dims else (p * (1 - y)).sum()
    fn = ((1 - p) * y).sum(dim=dims) if dims else ((1 - p) * y).sum()
    return tp, fp, fn


@pytest.mark.parametrize("per_image", [False, True])
def test_tversky_family_matches_the_formula(per_image):
    logits, target = _toy()
    tp, fp, fn = _soft_counts(logits, target, per_image)
    cases = {
        "dice": ({}, 1 - 2 * tp / (2 * tp + fp + fn)),
        "jaccard": ({}, 1 - tp / (tp + fp + fn)),
        "tversky": ({"alpha": 0.3, "beta": 0.7}, 1 - tp / (tp + 0.3 * fp + 0.7 * fn)),
        "focal_tversky": ({"alpha": 0.3, "beta": 0.7, "gamma": 0.75},
                          (1 - tp / (tp + 0.3 * fp + 0.7 * fn)) ** 0.75),
    }
    for name, (options, expected) in cases.items():
        loss = create_segmentation_loss(name, per_image=per_image, reduction="none", **options)
        got = loss(logits, target)
        assert got.shape == ((3,) if per_image else (1,)), name
        assert torch.allclose(got, expected.reshape(-1), atol=1e-5), name


def test_batch_losses_equal_smp_losses():
    logits, target = _toy(1)
    pairs = [
        ("dice", {}, smp.losses.DiceLoss("binary")),
        ("jaccard", {}, smp.losses.JaccardLoss("binary")),
        ("tversky", {"alpha": 0.2, "beta": 0.8}, smp.losses.TverskyLoss("binary", alpha=0.2, beta=0.8)),
        ("focal", {"gamma": 2.0, "alpha": 0.25}, smp.losses.FocalLoss("binary", alpha=0.25, gamma=2.0)),
        ("lovasz", {"per_image": True}, smp.losses.LovaszLoss("binary", per_image=True)),
    ]
    for name, options, reference in pairs:
        ours = create_segmentation_loss(name, **options)(logits, target)
        assert torch.allclose(ours, reference(logits, target), atol=1e-6), name


def _lovasz_reference(errors: list[float], labels: list[int]) -> float:
    """Lovasz extension of the Jaccard loss on hinge errors, from its definition."""
    order = sorted(range(len(errors)), key=lambda i: -errors[i])
    positives = {i for i, y in enumerate(labels) if y == 1}

    def jaccard_loss(mispredicted: set[int]) -> float:
        union = positives | mispredicted
        return 1.0 - len(positives - mispredicted) / len(union) if union else 0.0

    total, chosen, previous = 0.0, set(), 0.0
    for i in order:
        chosen.add(i)
        current = jaccard_loss(chosen)
        total += max(errors[i], 0.0) * (current - previous)
        previous = current
    return total


def test_lovasz_hinge_matches_its_definition():
    logits, target = _toy(2)
    loss = create_segmentation_loss("lovasz", per_image=True, reduction="none")(logits, target)
    for b in range(3):
        z = logits[b].reshape(-1).tolist()
        y = target[b].reshape(-1).int().tolist()
        errors = [1.0 - zi * (2 * yi - 1) for zi, yi in zip(z, y)]
        assert loss[b].item() == pytest.approx(_lovasz_reference(errors, y), abs=1e-5)


def test_pixel_losses_match_the_formula():
    logits, target = _toy(3)
    p = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=torch.tensor(3.0), reduction="none")
    got = create_segmentation_loss("bce", pos_weight=3.0, reduction="none")(logits, target)
    assert torch.allclose(got, bce.mean(dim=(1, 2, 3)), atol=1e-6)
    p_t = p * target + (1 - p) * (1 - target)
    alpha_t = 0.25 * target + 0.75 * (1 - target)
    focal = -alpha_t * (1 - p_t) ** 2 * torch.log(p_t)
    got = create_segmentation_loss("focal", gamma=2.0, alpha=0.25, reduction="none")(logits, target)
    assert torch.allclose(got, focal.mean(dim=(1, 2, 3)), atol=1e-5)


def test_combo_and_soft_f1_match_the_formula():
    logits, target = _toy(4)
    p = torch.sigmoid(logits).reshape(3, -1)
    y = target.reshape(3, -1)
    wce = -(0.7 * y * torch.log(p) + 0.3 * (1 - y) * torch.log(1 - p)).mean(dim=1)
    dice = (2 * (p * y).sum(1) + 1.0) / (p.sum(1) + y.sum(1) + 1.0)
    combo = create_segmentation_loss("combo", alpha=0.6, beta=0.7, smooth=1.0, per_image=True, reduction="none")
    assert torch.allclose(combo(logits, target), 0.6 * wce - 0.4 * dice, atol=1e-5)
    tp, fp, fn = (p * y).sum(1), (p * (1 - y)).sum(1), ((1 - p) * y).sum(1)
    soft_f1 = create_segmentation_loss("softf1", per_image=True, reduction="none")
    assert torch.allclose(soft_f1(logits, target), 1 - 2 * tp / (2 * tp + fp + fn + 1e-7), atol=1e-5)


def test_weighted_sums_add_their_terms():
    logits, target = _toy(5)
    total = create_segmentation_loss("bce_dice_focal", bce_weight=0.5, dice_weight=2.0, focal_weight=3.0,
                                     smooth=1.0, gamma=2.0)(logits, target)
    parts = (0.5 * create_segmentation_loss("bce")(logits, target)
             + 2.0 * create_segmentation_loss("dice", smooth=1.0)(logits, target)
             + 3.0 * create_segmentation_loss("focal", gamma=2.0)(logits, target))
    assert torch.allclose(total, parts, atol=1e-6)
    mixed = create_segmentation_loss("weighted_sum", weights={"jaccard": 1.0, "lovasz": 0.5},
                                     options={"jaccard": {"per_image": True}}, reduction="sum")
    expected = (create_segmentation_loss("jaccard", per_image=True, reduction="sum")(logits, target)
                + 0.5 * create_segmentation_loss("lovasz", reduction="sum")(logits, target))
    assert torch.allclose(mixed(logits, target), expected, atol=1e-5)


def _instances():
    for name in SEGMENTATION_LOSSES:
        kwargs = {"weights": {"bce": 1.0, "dice": 1.0}} if name == "weighted_sum" else {}
        yield name, kwargs


@pytest.mark.parametrize("name,kwargs", list(_instances()))
def test_gradient_pushes_toward_the_target(name, kwargs):
    logits, target = _toy(6)
    logits = (0.01 * logits).requires_grad_(True)     # near 0.5 everywhere: every pixel is wrong-ish
    create_segmentation_loss(name, **kwargs)(logits, target).backward()
    grad = logits.grad
    positive, negative = target.bool(), ~target.bool()
    assert (grad[positive] <= 1e-9).all() and grad[positive].sum() < 0, name
    assert (grad[negative] >= -1e-9).all() and grad[negative].sum() > 0, name


@pytest.mark.parametrize("name", ["dice", "jaccard", "tversky", "softf1", "combo", "lovasz", "bce", "focal"])
def test_reductions_are_consistent(name):
    logits, target = _toy(7)
    options = {} if name in ("bce", "focal", "lovasz") else {"per_image": True}
    none = create_segmentation_loss(name, reduction="none", **options)(logits, target)
    assert none.shape == (3,)
    assert torch.allclose(create_segmentation_loss(name, reduction="mean", **options)(logits, target), none.mean())
    assert torch.allclose(create_segmentation_loss(name, reduction="sum", **options)(logits, target), none.sum())


def test_empty_truths_are_masked_without_smoothing_and_scored_with_it():
    logits, target = _toy(8, empty_second=True)
    plain = create_segmentation_loss("dice", per_image=True, reduction="none")(logits, target)
    smoothed = create_segmentation_loss("dice", per_image=True, smooth=1.0, reduction="none")(logits, target)
    assert plain[1] == 0 and smoothed[1] > 0.5           # predictions on the empty image are penalised
    assert plain[0] > 0


def test_bad_inputs_raise():
    logits, target = _toy()
    with pytest.raises(InputError, match="same shape"):
        create_segmentation_loss("dice")(logits, target[:, :, :5])
    with pytest.raises(InputError, match="foreground"):
        create_segmentation_loss("bce")(torch.zeros(2, 2, 4, 4), torch.zeros(2, 2, 4, 4))
    with pytest.raises(ConfigError, match="unknown segmentation loss"):
        create_segmentation_loss("hinge")
    with pytest.raises(ConfigError, match="reduction"):
        create_segmentation_loss("dice", reduction="max")
    with pytest.raises(ConfigError, match="tversky"):
        create_segmentation_loss("tversky", delta=1)
    with pytest.raises(ConfigError, match="alpha"):
        create_segmentation_loss("tversky", alpha=-1.0, beta=0.5)
