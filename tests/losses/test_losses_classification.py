"""BCE, focal, soft-F1 and label-smoothing CE against reference computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torchvision.ops import sigmoid_focal_loss

from cxrlab.errors import ConfigError, InputError
from cxrlab.losses import (
    AUCMLoss,
    BCELoss,
    FocalLoss,
    LabelSmoothingCrossEntropy,
    SoftF1Loss,
    create_loss,
)

NAN = float("nan")


@pytest.fixture()
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 3, generator=gen) * 2
    target = (torch.rand(16, 3, generator=gen) < 0.4).float()
    target[torch.rand(16, 3, generator=gen) < 0.25] = NAN
    assert torch.isnan(target).any() and (~torch.isnan(target)).sum() > 20
    return logits, target


def test_bce_masks_unknown_targets(batch) -> None:
    logits, target = batch
    pos_weight = torch.tensor([2.0, 0.5, 1.0])
    total, count = 0.0, 0
    for k in range(3):
        known = ~torch.isnan(target[:, k])
        total += F.binary_cross_entropy_with_logits(logits[known, k], target[known, k],
                                                    pos_weight=pos_weight[k], reduction="sum").item()
        count += int(known.sum())
    loss = BCELoss(pos_weight=pos_weight)
    assert loss(logits, target).item() == pytest.approx(total / count, rel=1e-6)
    assert BCELoss(pos_weight=pos_weight, reduction="sum")(logits, target).item() == pytest.approx(total, rel=1e-6)
    per_entry = BCELoss(reduction="none")(logits, target)
    assert per_entry.shape == (16, 3) and torch.all(per_entry[torch.isnan(target)] == 0)


def test_bce_gradient_ignores_unknown_entries(batch) -> None:
    logits, target = batch
    logits = logits.clone().requires_grad_(True)
    BCELoss()(logits, target).backward()
    assert torch.all(logits.grad[torch.isnan(target)] == 0)
    assert torch.all(logits.grad[~torch.isnan(target)] != 0)


def test_bce_without_any_label_is_zero_and_differentiable() -> None:
    logits = torch.randn(4, 2, requires_grad=True)
    loss = BCELoss()(logits, torch.full((4, 2), NAN))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logits.grad == 0)


def test_pos_weight_is_a_buffer() -> None:
    loss = BCELoss(pos_weight=[3.0, 1.0])
    assert "pos_weight" in loss.state_dict()
    assert loss.to(torch.float64).pos_weight.dtype == torch.float64


def test_focal_matches_torchvision(batch) -> None:
    logits, target = batch
    known = ~torch.isnan(target)
    expected = sigmoid_focal_loss(logits[known], target[known], alpha=0.25, gamma=2.0, reduction="mean")
    assert FocalLoss(gamma=2.0, alpha=0.25)(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_focal_direct_formula_and_bce_limit(batch) -> None:
    logits, target = batch
    alpha = torch.tensor([0.1, 0.5, 0.9])
    p = torch.sigmoid(logits)
    known = ~torch.isnan(target)
    y = torch.nan_to_num(target)
    p_t = torch.where(y == 1, p, 1 - p)
    alpha_t = torch.where(y == 1, alpha.expand_as(p), 1 - alpha.expand_as(p))
    direct = -alpha_t * (1 - p_t) ** 1.5 * torch.log(p_t)
    ours = FocalLoss(gamma=1.5, alpha=alpha, reduction="none")(logits, target)
    torch.testing.assert_close(ours[known], direct[known], rtol=1e-5, atol=1e-6)
    assert FocalLoss(gamma=0.0)(logits, target).item() == pytest.approx(BCELoss()(logits, target).item(), rel=1e-6)
    weighted = FocalLoss(gamma=0.0, pos_weight=[3.0, 1.0, 0.5])(logits, target)
    assert weighted.item() == pytest.approx(BCELoss(pos_weight=[3.0, 1.0, 0.5])(logits, target).item(), rel=1e-6)
    with pytest.raises(ConfigError):
        FocalLoss(alpha=1.5)


def test_soft_f1_worked_example() -> None:
    probs = torch.tensor([0.9, 0.4, 0.2, 0.7])
    target = torch.tensor([1.0, 1.0, 0.0, 0.0])
    # tp = 0.9 + 0.4 = 1.3, fp = 0.2 + 0.7 = 0.9, fn = 0.1 + 0.6 = 0.7 -> F1 = 2.6 / 4.2
    loss = SoftF1Loss()(torch.logit(probs)[:, None], target[:, None])
    assert loss.item() == pytest.approx(1 - 2.6 / 4.2, rel=1e-5)


def test_soft_f1_equals_one_minus_f1_for_confident_predictions(batch) -> None:
    logits, target = batch
    hard = torch.where(logits > 0, 30.0, -30.0)
    per_class = SoftF1Loss(reduction="none")(hard, target)
    for k in range(3):
        known = ~torch.isnan(target[:, k])
        f1 = f1_score(target[known, k].numpy(), (hard[known, k] > 0).numpy(), zero_division=0)
        assert per_class[k].item() == pytest.approx(1 - f1, abs=1e-6)
    assert SoftF1Loss()(hard, target).item() == pytest.approx(per_class.mean().item(), rel=1e-6)


def test_soft_f1_rewards_raising_positive_logits() -> None:
    logits = torch.zeros(6, 1, requires_grad=True)
    target = torch.tensor([[1.0], [1.0], [0.0], [0.0], [NAN], [1.0]])
    SoftF1Loss()(logits, target).backward()
    assert torch.all(logits.grad[[0, 1, 5]] < 0) and torch.all(logits.grad[[2, 3]] > 0)
    assert logits.grad[4].item() == 0.0


def test_label_smoothing_ce_matches_torch() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(12, 3, generator=gen)
    target = torch.randint(0, 3, (12,), generator=gen)
    ours = LabelSmoothingCrossEntropy(smoothing=0.2)(logits, target)
    assert ours.item() == pytest.approx(F.cross_entropy(logits, target, label_smoothing=0.2).item(), rel=1e-6)
    target[[2, 5]] = -100
    none = LabelSmoothingCrossEntropy(0.1, reduction="none")(logits, target)
    torch.testing.assert_close(none, F.cross_entropy(logits, target, label_smoothing=0.1, reduction="none"))
    mean = LabelSmoothingCrossEntropy(0.1)(logits, target)
    assert mean.item() == pytest.approx(F.cross_entropy(logits, target, label_smoothing=0.1).item(), rel=1e-6)


def test_label_smoothing_ce_float_and_soft_targets() -> None:
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 3, generator=gen)
    index = torch.tensor([0, 2, 1, 1, 0, 2])
    as_float = index.float()
    as_float[3] = NAN
    keep = torch.tensor([True, True, True, False, True, True])
    expected = F.cross_entropy(logits[keep], index[keep], label_smoothing=0.1)
    loss = LabelSmoothingCrossEntropy(0.1)
    assert loss(logits, as_float).item() == pytest.approx(expected.item(), rel=1e-6)
    onehot = F.one_hot(index, 3).float()
    assert loss(logits, onehot).item() == pytest.approx(loss(logits, index).item(), rel=1e-6)
    with pytest.raises(InputError, match="class index"):
        loss(logits, torch.tensor([0, 1, 2, 3, 0, 1]))


def test_shape_mismatch_and_bad_reduction() -> None:
    with pytest.raises(InputError, match="same shape"):
        BCELoss()(torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(ConfigError, match="reduction"):
        FocalLoss(reduction="avg")


def test_create_loss_by_name() -> None:
    assert isinstance(create_loss("bce", pos_weight=[1.0, 2.0]), BCELoss)
    assert create_loss("focal", gamma=3.0).gamma == 3.0
    assert isinstance(create_loss("softf1"), SoftF1Loss)
    assert create_loss("ce", smoothing=0.05).smoothing == 0.05
    aucm = create_loss("aucm", num_classes=2, imratio=np.array([0.1, 0.2]))
    assert isinstance(aucm, AUCMLoss) and aucm.imratio.tolist() == pytest.approx([0.1, 0.2])
    with pytest.raises(ConfigError, match="unknown loss"):
        create_loss("dice")
    with pytest.raises(ConfigError, match="gamma"):
        create_loss("bce", gamma=2.0)
