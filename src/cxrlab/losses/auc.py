"""AUC-M loss (LibAUC's AUC-margin surrogate) on logits, and its PESG optimizer.

Deep AUC Maximization (Yuan et al., ICCV 2021; seed 000) minimises over the model ``w``
and ``a, b`` and maximises over ``alpha >= 0``::

    F = (1-p) E[(s-a)^2 I(y=1)] + p E[(s-b)^2 I(y=0)]
        + 2 alpha (p (1-p) m + E[p s I(y=0) - (1-p) s I(y=1)]) - p (1-p) alpha^2

with scores ``s = sigmoid(logit)`` in [0, 1], margin ``m`` and positive share ``p``
(``version="v1"``, LibAUC's default). ``version="v2"`` drops the prior:
``E[(s-a)^2 | y=1] + E[(s-b)^2 | y=0] + 2 alpha (m + E[s | y=0] - E[s | y=1]) - alpha^2``.

:class:`AUCMLoss` computes exactly LibAUC 2.0.1's ``libauc.losses.AUCMLoss`` (binary) and
``MultiLabelAUCMLoss`` (tests check both to float precision) rather than calling them,
because for cxrlab's data contract LibAUC's classes fall short: they count NaN targets as
samples (neither positive nor negative, but in the denominator), re-estimate ``p`` from
every mini-batch unless ``forward(auto=False)`` is passed even when ``imratio`` is given,
the multi-label class drops the margin from the v1 objective (``p(1-p)`` for
``p(1-p) m``), keeps ``a, b, alpha`` as plain tensors (not moved by ``.to()``, not in
``state_dict``) and picks a CUDA device by itself. Here ``a, b, alpha`` are per-class
``nn.Parameter`` s and the optimizer is LibAUC's own :class:`libauc.optimizers.PESG`
(:func:`create_pesg`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from cxrlab.errors import ConfigError, InputError, LabelValueError
from cxrlab.losses.classification import check_reduction, split_targets

VERSIONS: tuple[str, ...] = ("v1", "v2")


def estimate_imratio(labels: np.ndarray | Sequence[float] | torch.Tensor) -> np.ndarray:
    """Share of positives per class among the labelled entries (NaN = unknown).

    Args:
        labels: ``(N,)`` or ``(N, K)`` training labels, 1 positive, 0 negative, NaN unknown.

    Returns:
        float64 array ``(K,)`` (``(1,)`` for 1-D labels).

    Raises:
        LabelValueError: A class has no labelled entry, or a label is not 0, 1 or NaN.
    """
    array = labels.detach().cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels, dtype=float)
    array = array.astype(float).reshape(len(array), -1)
    known = ~np.isnan(array)
    if not np.isin(array[known], (0.0, 1.0)).all():
        bad = sorted(set(np.unique(array[known])) - {0.0, 1.0})[:5]
        raise LabelValueError("labels", f"AUC-M needs binary labels (1, 0, NaN); found {bad}")
    counts = known.sum(axis=0)
    if (counts == 0).any():
        raise LabelValueError("labels", f"class(es) {np.flatnonzero(counts == 0).tolist()} have no labelled entry")
    return np.nansum(array, axis=0) / counts


class AUCMLoss(nn.Module):
    """AUC-margin loss on logits, binary or multi-label, NaN targets ignored.

    Each class has its own ``a``, ``b`` and ``alpha`` (``nn.Parameter`` of shape ``(K,)``)
    and its terms are averaged over that class's labelled entries. Optimise with
    :func:`create_pesg` (PESG ascends in ``alpha``); a plain optimizer over these
    parameters would minimise ``alpha`` too, which is not the min-max problem.

    Args:
        num_classes: K, the number of logits.
        margin: The margin ``m`` (LibAUC default 1.0).
        imratio: Positive share ``p`` per class (a scalar for all classes or K values),
            best :func:`estimate_imratio` of the training labels. None estimates it from
            each mini-batch (LibAUC's behaviour without ``imratio``). Ignored by ``v2``.
        version: ``"v1"`` (with the class prior, LibAUC's default) or ``"v2"``.
        reduction: ``"mean"`` over classes with labelled entries, ``"sum"``, or ``"none"``
            for the per-class vector ``(K,)`` (0 for classes without labels in the batch).

    Shape:
        - logits: ``(B, K)``, or ``(B,)`` when K = 1.
        - target: same shape, 1 positive, 0 negative, NaN unknown.
        - output: scalar, or ``(K,)`` for ``"none"``.

    Example:
        >>> loss = AUCMLoss(num_classes=2, imratio=[0.1, 0.3])
        >>> logits = torch.randn(8, 2, requires_grad=True)
        >>> target = torch.tensor([[1, 0], [0, 1], [0, float("nan")], [1, 0]] * 2)
        >>> loss(logits, target).backward()
    """

    imratio: torch.Tensor | None

    def __init__(self, num_classes: int = 1, margin: float = 1.0,
                 imratio: float | Sequence[float] | np.ndarray | torch.Tensor | None = None,
                 version: str = "v1", reduction: str = "mean") -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError("loss.num_classes", f"must be >= 1, got {num_classes}")
        if version not in VERSIONS:
            raise ConfigError("loss.version", f"unknown AUC-M version {version!r}; choose from {VERSIONS}")
        self.num_classes = int(num_classes)
        self.margin = float(margin)
        self.version = version
        self.reduction = check_reduction(reduction)
        self.a = nn.Parameter(torch.zeros(num_classes))
        self.b = nn.Parameter(torch.zeros(num_classes))
        self.alpha = nn.Parameter(torch.zeros(num_classes))
        self.register_buffer("imratio", self._imratio(imratio))

    def _imratio(self, imratio: float | Sequence[float] | np.ndarray | torch.Tensor | None) -> torch.Tensor | None:
        if imratio is None:
            return None
        value = torch.as_tensor(np.asarray(imratio, dtype=np.float32)).flatten()
        if value.numel() == 1:
            value = value.expand(self.num_classes).clone()
        if value.numel() != self.num_classes:
            raise ConfigError("loss.imratio", f"{value.numel()} values for {self.num_classes} classes")
        if bool(((value < 0) | (value > 1) | torch.isnan(value)).any()):
            raise ConfigError("loss.imratio", f"positive shares must lie in [0, 1], got {value.tolist()}")
        return value

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.ndim == 1:
            logits, target = logits[:, None], target.reshape(-1, 1)
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise InputError(None, f"AUCMLoss: expected logits (B, {self.num_classes}), got {tuple(logits.shape)}")
        mask, filled = split_targets(logits, target, type(self).__name__)
        if bool(((filled != 0) & (filled != 1) & (mask > 0)).any()):
            raise InputError(None, "AUCMLoss: targets must be 1, 0 or NaN")
        score = torch.sigmoid(logits)
        pos = mask * filled
        neg = mask * (1 - filled)
        count = mask.sum(dim=0)
        if self.version == "v1":
            loss = self._v1(score, pos, neg, count)
        else:
            loss = self._v2(score, pos, neg)
        present = (count > 0).to(loss.dtype)
        loss = loss * present
        if self.reduction == "none":
            return loss
        if self.reduction == "sum":
            return loss.sum()
        return loss.sum() / present.sum().clamp_min(1.0)

    def _v1(self, score: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        n = count.clamp_min(1.0)
        p = self.imratio if self.imratio is not None else pos.sum(dim=0) / n
        p = p.to(score.dtype)
        a, b, alpha, m = self.a, self.b, self.alpha, self.margin
        return ((1 - p) * ((score - a) ** 2 * pos).sum(dim=0) / n
                + p * ((score - b) ** 2 * neg).sum(dim=0) / n
                + 2 * alpha * (p * (1 - p) * m + (p * score * neg - (1 - p) * score * pos).sum(dim=0) / n)
                - p * (1 - p) * alpha ** 2)

    def _v2(self, score: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        n_pos = pos.sum(dim=0).clamp_min(1.0)
        n_neg = neg.sum(dim=0).clamp_min(1.0)
        mean_pos = (score * pos).sum(dim=0) / n_pos
        mean_neg = (score * neg).sum(dim=0) / n_neg
        return (((score - self.a) ** 2 * pos).sum(dim=0) / n_pos
                + ((score - self.b) ** 2 * neg).sum(dim=0) / n_neg
                + 2 * self.alpha * (self.margin + mean_neg - mean_pos)
                - self.alpha ** 2)


def create_pesg(model: nn.Module | Iterable[nn.Parameter], loss: AUCMLoss, lr: float = 0.1,
                epoch_decay: float = 2e-3, weight_decay: float = 1e-5, momentum: float = 0.9,
                mode: str = "sgd", clip_value: float = 1.0):
    """LibAUC's PESG over the model's trainable parameters plus the loss's ``a``, ``b``, ``alpha``.

    PESG adds ``a`` and ``b`` to its parameter list and updates ``alpha`` itself by
    projected ascent (``alpha += lr * (2 (m + b - a) - 2 alpha)``, clamped at 0). It takes
    one parameter group, so there are no discriminative learning rates.

    Stage boundaries: LibAUC divides the LR by 10 at fixed epochs (e.g. at 50 % and 75 %
    of training) by calling ``optimizer.update_regularizer(decay_factor=10)``. Besides
    the LR decay this resets the ``epoch_decay`` reference point (the proximal term
    ``epoch_decay * (w - w_ref)``) to the average of the iterates since the last reset.
    Call it at the start of each such epoch, not every step.

    Args:
        model: A module (its parameters with ``requires_grad``) or an iterable of parameters.
        loss: The :class:`AUCMLoss` being minimised.
        lr: Learning rate (LibAUC's examples use 0.1).
        epoch_decay: Weight of the epoch-level proximal term (LibAUC default 2e-3).
        weight_decay: L2 penalty (LibAUC default 1e-5).
        momentum: Momentum for ``mode="sgd"``.
        mode: ``"sgd"`` or ``"adam"``.
        clip_value: Gradients are clipped to ``[-clip_value, clip_value]``.

    Returns:
        A ``libauc.optimizers.PESG`` (verbose off; its reference tensors live on the
        parameters' device).

    Raises:
        ConfigError: ``loss`` is not an AUC-M loss, or there is nothing to optimise.
    """
    from libauc.optimizers import PESG

    if not all(hasattr(loss, name) for name in ("a", "b", "alpha", "margin")):
        raise ConfigError("train.optimizer", "PESG optimizes the AUC-M loss (a, b, alpha); "
                                             f"got {type(loss).__name__}")
    params = model.parameters() if isinstance(model, nn.Module) else model
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ConfigError("train.optimizer", "no trainable parameters for PESG")
    if mode not in ("sgd", "adam"):
        raise ConfigError("train.optimizer", f"PESG mode must be 'sgd' or 'adam', got {mode!r}")
    return PESG(trainable, loss_fn=loss, lr=lr, mode=mode, clip_value=clip_value, weight_decay=weight_decay,
                epoch_decay=epoch_decay, momentum=momentum, verbose=False, device=trainable[0].device)
