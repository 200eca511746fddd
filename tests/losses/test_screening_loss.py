"""Seed 003's CE + λ·MSE loss against a direct computation, and its reconstruction target."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrlab.data.screening import DilationConfig, dilate_mask
from cxrlab.errors import ConfigError, InputError
from cxrlab.losses.screening import IGNORE_INDEX, ScreeningLoss, reconstruction_target


def _batch(seed: int = 0, b: int = 4, k: int = 3, s: int = 8):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, generator=g, requires_grad=True)
    target = torch.randint(0, k, (b,), generator=g)
    recon = torch.rand(b, 1, s, s, generator=g, requires_grad=True)
    image = torch.rand(b, 1, s, s, generator=g)
    mask = (torch.rand(b, 1, s, s, generator=g) > 0.6).float()
    return logits, target, recon, image, mask


@pytest.mark.parametrize("lam", [0.8, 0.0, 1.7])
def test_combined_loss_equals_direct_computation(lam):
    logits, target, recon, image, mask = _batch()
    loss = ScreeningLoss(lam=lam)(logits, target, recon, image, mask)
    direct = F.cross_entropy(logits, target) + lam * F.mse_loss(recon, image * mask)
    assert torch.allclose(loss, direct, atol=1e-6)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    if lam:
        assert recon.grad.abs().sum() > 0


def test_default_lambda_is_seed_value():
    assert ScreeningLoss().lam == 0.8


def test_reduction_none_and_sum_per_image():
    logits, target, recon, image, mask = _batch(1)
    per = ScreeningLoss(lam=0.5, reduction="none")(logits, target, recon, image, mask)
    ce = F.cross_entropy(logits, target, reduction="none")
    mse = ((recon - image * mask) ** 2).flatten(1).mean(1)
    assert per.shape == (4,)
    assert torch.allclose(per, ce + 0.5 * mse, atol=1e-6)
    total = ScreeningLoss(lam=0.5, reduction="sum")(logits, target, recon, image, mask)
    assert torch.allclose(total, per.sum(), atol=1e-5)


def test_unknown_masks_leave_mse_out_and_ignored_targets_leave_ce_out():
    logits, target, recon, image, mask = _batch(2)
    target = target.clone()
    target[1] = IGNORE_INDEX
    known = torch.tensor([True, False, True, False])
    loss = ScreeningLoss(lam=0.8)(logits, target, recon, image, mask, known)
    keep = target != IGNORE_INDEX
    ce = F.cross_entropy(logits[keep], target[keep])
    mse = ((recon[known] - (image * mask)[known]) ** 2).mean()
    assert torch.allclose(loss, ce + 0.8 * mse, atol=1e-6)


def test_shared_logits_average_over_labelled_entries():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 2, 3, generator=g)
    target = torch.tensor([[0, 1], [2, IGNORE_INDEX], [1, 1]])
    loss = ScreeningLoss(lam=0.0)(logits, target)
    entries = [F.cross_entropy(logits[i, d][None], target[i, d][None])
               for i in range(3) for d in range(2) if target[i, d] != IGNORE_INDEX]
    assert torch.allclose(loss, torch.stack(entries).mean(), atol=1e-6)


def test_reconstruction_target_is_zero_outside_the_dilated_mask():
    rng = np.random.default_rng(0)
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[10:14, 12:15] = 1
    dilated = dilate_mask(mask, DilationConfig(size=5))
    assert dilated.sum() > mask.sum() and (dilated >= mask).all()   # grows, keeps the lesion
    image = torch.from_numpy(rng.uniform(0.1, 1.0, (1, 1, 32, 32)).astype(np.float32))
    target = reconstruction_target(image, torch.from_numpy(dilated)[None, None].float())
    outside = torch.from_numpy(dilated == 0)[None, None]
    assert (target[outside] == 0).all()
    assert torch.equal(target[~outside], image[~outside])
    undilated = dilate_mask(mask, DilationConfig(enabled=False))
    assert np.array_equal(undilated, mask)


def test_bad_inputs_raise():
    with pytest.raises(ConfigError):
        ScreeningLoss(lam=-1)
    with pytest.raises(ConfigError):
        ScreeningLoss(reduction="avg")
    logits, target, recon, image, mask = _batch()
    with pytest.raises(InputError):
        ScreeningLoss()(logits, target[:2])
    with pytest.raises(InputError):
        ScreeningLoss()(logits, target, recon, None, None)
