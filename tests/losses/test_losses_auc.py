"""AUC-M against its written-out definition and LibAUC; PESG on a toy problem."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from libauc.losses import AUCMLoss as LibAUCMLoss
from libauc.losses import MultiLabelAUCMLoss
from sklearn.metrics import roc_auc_score

from cxrlab.errors import ConfigError, InputError, LabelValueError
from cxrlab.losses import AUCMLoss, BCELoss, create_pesg, estimate_imratio

NAN = float("nan")
CPU = torch.device("cpu")


def aucm_v1(s: np.ndarray, y: np.ndarray, a: float, b: float, alpha: float, p: float, m: float) -> float:
    """LibAUC's AUC-M (v1) for one class, over the labelled samples only."""
    keep = ~np.isnan(y)
    s, y = s[keep], y[keep]
    pos, neg = (y == 1).astype(float), (y == 0).astype(float)
    return float((1 - p) * np.mean((s - a) ** 2 * pos) + p * np.mean((s - b) ** 2 * neg)
                 + 2 * alpha * (p * (1 - p) * m + np.mean(p * s * neg - (1 - p) * s * pos))
                 - p * (1 - p) * alpha ** 2)


def aucm_v2(s: np.ndarray, y: np.ndarray, a: float, b: float, alpha: float, m: float) -> float:
    sp, sn = s[y == 1], s[y == 0]
    return float(np.mean((sp - a) ** 2) + np.mean((sn - b) ** 2) + 2 * alpha * (m + sn.mean() - sp.mean())
                 - alpha ** 2)


def _set(loss: torch.nn.Module, a, b, alpha) -> None:
    with torch.no_grad():
        loss.a.copy_(torch.as_tensor(a, dtype=torch.float32))
        loss.b.copy_(torch.as_tensor(b, dtype=torch.float32))
        loss.alpha.copy_(torch.as_tensor(alpha, dtype=torch.float32))


@pytest.fixture()
def multilabel() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(24, 3, generator=gen)
    target = (torch.rand(24, 3, generator=gen) < 0.3).float()
    target[torch.rand(24, 3, generator=gen) < 0.2] = NAN
    target[0], target[1] = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0.0, 0.0, 0.0])
    return logits, target


def test_multilabel_v1_matches_the_formula_with_nan_masking(multilabel) -> None:
    logits, target = multilabel
    a, b, alpha, p = [0.6, 0.5, 0.7], [0.2, 0.3, 0.1], [0.4, 0.9, 0.0], [0.1, 0.3, 0.25]
    loss = AUCMLoss(3, margin=0.8, imratio=p, reduction="none")
    _set(loss, a, b, alpha)
    s = torch.sigmoid(logits).numpy()
    expected = [aucm_v1(s[:, k], target[:, k].numpy(), a[k], b[k], alpha[k], p[k], 0.8) for k in range(3)]
    np.testing.assert_allclose(loss(logits, target).detach().numpy(), expected, rtol=1e-5)
    mean = AUCMLoss(3, margin=0.8, imratio=p)
    _set(mean, a, b, alpha)
    assert mean(logits, target).item() == pytest.approx(np.mean(expected), rel=1e-5)


def test_batch_estimated_imratio_uses_labelled_entries(multilabel) -> None:
    logits, target = multilabel
    loss = AUCMLoss(3, reduction="none")
    _set(loss, [0.5] * 3, [0.2] * 3, [0.3] * 3)
    s, y = torch.sigmoid(logits).numpy(), target.numpy()
    expected = [aucm_v1(s[:, k], y[:, k], 0.5, 0.2, 0.3, float(np.nanmean(y[:, k])), 1.0) for k in range(3)]
    np.testing.assert_allclose(loss(logits, target).detach().numpy(), expected, rtol=1e-5)


def test_v2_matches_the_formula(multilabel) -> None:
    logits, target = multilabel
    loss = AUCMLoss(3, version="v2", reduction="none")
    _set(loss, [0.5, 0.4, 0.6], [0.2, 0.1, 0.3], [0.3, 0.2, 0.5])
    s, y = torch.sigmoid(logits).numpy(), target.numpy()
    expected = [aucm_v2(s[:, k], y[:, k], [0.5, 0.4, 0.6][k], [0.2, 0.1, 0.3][k], [0.3, 0.2, 0.5][k], 1.0)
                for k in range(3)]
    np.testing.assert_allclose(loss(logits, target).detach().numpy(), expected, rtol=1e-5)


def test_binary_matches_libauc() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(32, generator=gen)
    target = (torch.rand(32, generator=gen) < 0.3).float()
    ours, ref = AUCMLoss(1, margin=0.7, imratio=0.25), LibAUCMLoss(margin=0.7, imratio=0.25, device=CPU)
    _set(ours, [0.3], [0.1], [0.5])
    _set(ref, [0.3], [0.1], [0.5])
    expected = ref(torch.sigmoid(logits), target, auto=False).item()
    assert ours(logits, target).item() == pytest.approx(expected, rel=1e-6)
    assert ours(logits[:, None], target[:, None]).item() == pytest.approx(expected, rel=1e-6)


def test_multilabel_matches_libauc_without_nan() -> None:
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(32, 4, generator=gen)
    target = (torch.rand(32, 4, generator=gen) < 0.3).float()
    p = [0.2, 0.3, 0.4, 0.1]
    # margin 1.0: LibAUC's multi-label v1 leaves the margin out of its formula.
    ours, ref = AUCMLoss(4, imratio=p), MultiLabelAUCMLoss(num_labels=4, imratio=list(p), device=CPU)
    with torch.no_grad():
        ref.a += 0.4
        ref.alpha += 0.6
    _set(ours, [0.4] * 4, [0.0] * 4, [0.6] * 4)
    assert ours(logits, target).item() == pytest.approx(ref(torch.sigmoid(logits), target, auto=False).item(),
                                                        rel=1e-6)


def test_gradients_skip_unknown_targets_and_parameters_are_registered(multilabel) -> None:
    logits, target = multilabel
    logits = logits.clone().requires_grad_(True)
    loss = AUCMLoss(3, imratio=0.3)
    _set(loss, [0.5] * 3, [0.2] * 3, [0.3] * 3)
    loss(logits, target).backward()
    assert torch.all(logits.grad[torch.isnan(target)] == 0)
    assert {"a", "b", "alpha", "imratio"} <= set(loss.state_dict())
    assert loss.alpha.grad is not None and loss.a.grad is not None


def test_input_checks() -> None:
    with pytest.raises(ConfigError, match="imratio"):
        AUCMLoss(2, imratio=[0.1, 0.2, 0.3])
    with pytest.raises(ConfigError, match="imratio"):
        AUCMLoss(1, imratio=1.5)
    with pytest.raises(InputError, match="1, 0 or NaN"):
        AUCMLoss(1)(torch.zeros(4), torch.tensor([1.0, 0.0, 0.5, 1.0]))
    with pytest.raises(InputError, match=r"\(B, 2\)"):
        AUCMLoss(2)(torch.zeros(4, 3), torch.zeros(4, 3))


def test_estimate_imratio() -> None:
    labels = np.array([[1, 0], [0, np.nan], [1, 1], [0, 0], [np.nan, 0]])
    np.testing.assert_allclose(estimate_imratio(labels), [0.5, 0.25])
    np.testing.assert_allclose(estimate_imratio([1, 0, 0, 0]), [0.25])
    with pytest.raises(LabelValueError, match="no labelled entry"):
        estimate_imratio(np.array([[1, np.nan], [0, np.nan]]))
    with pytest.raises(LabelValueError, match="binary"):
        estimate_imratio(np.array([1, -1, 0]))


def _surrogate(scores: torch.Tensor, y: torch.Tensor) -> float:
    """The squared-hinge AUC surrogate AUC-M minimises once a, b, alpha are at their optimum."""
    sp, sn = scores[y == 1], scores[y == 0]
    gap = torch.clamp(1.0 - (sp.mean() - sn.mean()), min=0)
    return float(sp.var(unbiased=False) + sn.var(unbiased=False) + gap ** 2)


def test_pesg_learns_a_separable_problem() -> None:
    torch.manual_seed(0)
    n = 200
    y = (torch.rand(n) < 0.2).float()
    x = torch.randn(n, 2) + y[:, None] * 2.0
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-1.0, -0.5]]))  # start with the ranking reversed
        model.bias.zero_()
    loss_fn = AUCMLoss(1, imratio=float(estimate_imratio(y.numpy())[0]))
    optimizer = create_pesg(model, loss_fn, lr=1.0, epoch_decay=2e-3, weight_decay=1e-5)

    def scores() -> torch.Tensor:
        with torch.no_grad():
            return torch.sigmoid(model(x).squeeze(1))

    start_surrogate, start_auc = _surrogate(scores(), y), roc_auc_score(y, scores())
    gen = torch.Generator().manual_seed(1)
    for step in range(100):
        idx = torch.randperm(n, generator=gen)[:40]
        optimizer.zero_grad()
        loss_fn(model(x[idx]).squeeze(1), y[idx]).backward()
        optimizer.step()
        if step == 74:
            optimizer.update_regularizer(decay_factor=10)
            assert optimizer.T == 0 and optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    assert start_auc < 0.1
    assert roc_auc_score(y, scores()) > 0.95
    assert _surrogate(scores(), y) < 0.5 * start_surrogate
    assert loss_fn.alpha.item() >= 0 and loss_fn.a.item() > loss_fn.b.item()


def test_create_pesg_needs_an_aucm_loss() -> None:
    model = torch.nn.Linear(2, 1)
    with pytest.raises(ConfigError, match="AUC-M"):
        create_pesg(model, BCELoss(), lr=0.1)
    optimizer = create_pesg(model.parameters(), AUCMLoss(1), lr=0.1)
    params = optimizer.param_groups[0]["params"]
    assert len(params) == 4  # weight, bias, a, b (alpha is updated by ascent)
