"""Binary segmentation losses on logits, each an ``nn.Module`` with a ``reduction``.

Every loss takes ``logits`` and ``target`` of the same shape, ``(B, 1, H, W)`` or
``(B, H, W)``: one foreground logit per pixel (a two-channel softmax output becomes one
with :func:`cxrlab.models.segmentation.foreground_logits`) and a 0/1 mask. Where
``segmentation_models_pytorch`` has the loss, its code computes it (soft Dice/Jaccard/
Tversky scores, Lovasz hinge, focal); the rest are written here (focal Tversky, Combo,
soft-F1 over pixels, and the weighted BCE + Dice + focal sum).

Reductions work on **images**: ``"none"`` returns one loss per image ``(B,)``,
``"mean"`` their mean and ``"sum"`` their sum. Region losses (Dice, Jaccard, Tversky,
focal Tversky, Lovasz, soft-F1, Combo) take ``per_image``: ``True`` scores each image
on its own, ``False`` (smp's default, a "batch Dice") pools the pixels of the whole
batch into one score — then ``"none"`` returns a one-element tensor ``(1,)``.

Empty truths: with ``smooth == 0`` the soft Dice/Jaccard/Tversky score of an item whose
truth is empty is undefined and such items contribute 0 (smp does the same). With
``smooth > 0`` they are scored, so a prediction on an empty image is penalised — what a
baseline trained on every SIIM image needs.

Example:
    >>> loss = create_segmentation_loss("dice", per_image=True, smooth=1.0)
    >>> logits = torch.zeros(2, 1, 8, 8, requires_grad=True)
    >>> target = torch.zeros(2, 1, 8, 8); target[0, :, 2:5, 2:5] = 1
    >>> loss(logits, target).backward()
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import FocalLoss as _SmpFocalLoss
from segmentation_models_pytorch.losses import LovaszLoss as _SmpLovaszLoss
from segmentation_models_pytorch.losses._functional import soft_tversky_score
from torch import nn

from cxrlab.errors import ConfigError, InputError
from cxrlab.losses.classification import REDUCTIONS, SoftF1Loss, check_reduction


def _flatten(logits: torch.Tensor, target: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, P)`` logits and float targets; checks the shapes."""
    if logits.shape != target.shape:
        raise InputError(None, f"{name}: logits {tuple(logits.shape)} and target {tuple(target.shape)} "
                               "must have the same shape")
    if logits.ndim == 4 and logits.shape[1] != 1:
        raise InputError(None, f"{name}: expected one foreground channel, got {logits.shape[1]} "
                               "(convert a two-channel output with foreground_logits)")
    if logits.ndim not in (3, 4):
        raise InputError(None, f"{name}: expected (B, 1, H, W) or (B, H, W), got {tuple(logits.shape)}")
    batch = logits.shape[0]
    return logits.reshape(batch, -1), target.reshape(batch, -1).to(logits.dtype)


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return values
    if reduction == "sum":
        return values.sum()
    return values.mean()


class _RegionLoss(nn.Module):
    """Shared arguments of the soft-overlap losses."""

    def __init__(self, per_image: bool = False, smooth: float = 0.0, eps: float = 1e-7,
                 reduction: str = "mean") -> None:
        super().__init__()
        if smooth < 0 or eps < 0:
            raise ConfigError("loss.smooth", f"smooth and eps must be >= 0, got {smooth}, {eps}")
        self.per_image = bool(per_image)
        self.smooth = float(smooth)
        self.eps = float(eps)
        self.reduction = check_reduction(reduction)

    def _scores(self, logits: torch.Tensor, target: torch.Tensor, alpha: float, beta: float) -> tuple[
            torch.Tensor, torch.Tensor]:
        """Soft Tversky scores per item (image, or the whole batch) and the "truth present" mask."""
        flat_logits, flat_target = _flatten(logits, target, type(self).__name__)
        prob = F.logsigmoid(flat_logits).exp()   # smp's stable sigmoid
        if self.per_image:
            score = soft_tversky_score(prob, flat_target, alpha, beta, self.smooth, self.eps, dims=(1,))
            present = flat_target.sum(dim=1) > 0
        else:
            score = soft_tversky_score(prob, flat_target, alpha, beta, self.smooth, self.eps).reshape(1)
            present = (flat_target.sum() > 0).reshape(1)
        return score, present

    def _masked(self, loss: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        if self.smooth == 0.0:
            loss = loss * present.to(loss.dtype)
        return _reduce(loss, self.reduction)


class TverskyLoss(_RegionLoss):
    """``1 - TI`` with the Tversky index ``TI = tp / (tp + alpha fp + beta fn)`` on probabilities.

    Seed 002 §3: alpha weighs false positives, beta false negatives (beta > alpha favours
    recall, useful for small lesions). ``alpha = beta = 0.5`` is Dice, ``1, 1`` Jaccard.
    Computed with smp's ``soft_tversky_score``.

    Args:
        alpha: Weight of false positives.
        beta: Weight of false negatives.
        per_image: Score each image (True) or the pooled batch (False).
        smooth: Added to numerator and denominator (see the module docstring on empty truths).
        eps: Lower bound of the denominator.
        log_loss: Use ``-log(score)`` instead of ``1 - score``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over images.

    Shape:
        - logits, target: ``(B, 1, H, W)`` or ``(B, H, W)``.
        - output: scalar; ``(B,)`` (or ``(1,)`` without ``per_image``) for ``"none"``.

    Example:
        >>> TverskyLoss(alpha=0.3, beta=0.7)(torch.randn(2, 1, 8, 8), torch.ones(2, 1, 8, 8)).shape
        torch.Size([])
    """

    def __init__(self, alpha: float = 0.5, beta: float = 0.5, per_image: bool = False, smooth: float = 0.0,
                 eps: float = 1e-7, log_loss: bool = False, reduction: str = "mean") -> None:
        super().__init__(per_image, smooth, eps, reduction)
        if alpha < 0 or beta < 0:
            raise ConfigError("loss.alpha", f"alpha and beta must be >= 0, got {alpha}, {beta}")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.log_loss = bool(log_loss)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        score, present = self._scores(logits, target, self.alpha, self.beta)
        loss = -torch.log(score.clamp_min(self.eps)) if self.log_loss else 1.0 - score
        return self._masked(loss, present)


class DiceLoss(TverskyLoss):
    """``1 - Dice`` on probabilities (smp's soft Dice; Tversky with alpha = beta = 0.5).

    Args: as :class:`TverskyLoss` without alpha/beta.
    """

    def __init__(self, per_image: bool = False, smooth: float = 0.0, eps: float = 1e-7,
                 log_loss: bool = False, reduction: str = "mean") -> None:
        super().__init__(0.5, 0.5, per_image, smooth, eps, log_loss, reduction)


class JaccardLoss(TverskyLoss):
    """``1 - IoU`` on probabilities (seed 002's baseline and One Case U-Nets, Tables 4.2/4.4).

    Args: as :class:`TverskyLoss` without alpha/beta.
    """

    def __init__(self, per_image: bool = False, smooth: float = 0.0, eps: float = 1e-7,
                 log_loss: bool = False, reduction: str = "mean") -> None:
        super().__init__(1.0, 1.0, per_image, smooth, eps, log_loss, reduction)


class FocalTverskyLoss(_RegionLoss):
    """Focal Tversky loss ``(1 - TI) ** gamma`` (Abraham & Khan 2019; seed 002 §3).

    The paper writes the exponent as ``1 / gamma`` with its gamma = 4/3, i.e. 0.75 here.
    An exponent below 1 makes the gradient grow as the index approaches 1, so the small
    residual errors on small lesions keep pushing; ``gamma = 1`` is :class:`TverskyLoss`.

    Args:
        alpha, beta: Tversky weights of false positives / false negatives.
        gamma: Focal exponent (> 0).
        per_image, smooth, eps, reduction: As :class:`TverskyLoss`.

    Shape: as :class:`TverskyLoss`.
    """

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, gamma: float = 0.75, per_image: bool = False,
                 smooth: float = 0.0, eps: float = 1e-7, reduction: str = "mean") -> None:
        super().__init__(per_image, smooth, eps, reduction)
        if gamma <= 0:
            raise ConfigError("loss.gamma", f"must be > 0, got {gamma}")
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        score, present = self._scores(logits, target, self.alpha, self.beta)
        # clamp: d/dx x**gamma is infinite at 0 for gamma < 1
        loss = (1.0 - score).clamp_min(self.eps).pow(self.gamma)
        return self._masked(loss, present)


class LovaszHingeLoss(nn.Module):
    """Lovasz hinge (Berman et al. 2018): a convex surrogate of the Jaccard loss on logits.

    Computed by smp's ``LovaszLoss(mode="binary")``, per image or over the batch.

    Args:
        per_image: One Lovasz extension per image (Berman's choice for binary masks).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over images.

    Shape: as :class:`TverskyLoss`.
    """

    def __init__(self, per_image: bool = True, reduction: str = "mean") -> None:
        super().__init__()
        self.per_image = bool(per_image)
        self.reduction = check_reduction(reduction)
        self._lovasz = _SmpLovaszLoss(mode="binary", per_image=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        flat_logits, flat_target = _flatten(logits, target, type(self).__name__)
        if self.per_image:
            values = torch.stack([self._lovasz(flat_logits[i:i + 1], flat_target[i:i + 1])
                                  for i in range(flat_logits.shape[0])])
        else:
            values = self._lovasz(flat_logits, flat_target).reshape(1)
        return _reduce(values, self.reduction)


class BinaryCrossEntropyLoss(nn.Module):
    """Pixel-wise BCE on logits, averaged per image.

    Args:
        pos_weight: Weight of the foreground term (a buffer), e.g. background/foreground
            pixel ratio.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over images.

    Shape: as :class:`TverskyLoss` (``"none"`` gives ``(B,)``).
    """

    pos_weight: torch.Tensor | None

    def __init__(self, pos_weight: float | None = None, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)
        self.register_buffer("pos_weight", None if pos_weight is None else torch.tensor(float(pos_weight)))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        flat_logits, flat_target = _flatten(logits, target, type(self).__name__)
        loss = F.binary_cross_entropy_with_logits(flat_logits, flat_target, pos_weight=self.pos_weight,
                                                  reduction="none")
        return _reduce(loss.mean(dim=1), self.reduction)


class BinaryFocalLoss(nn.Module):
    """Pixel-wise sigmoid focal loss (smp's ``FocalLoss(mode="binary")``), averaged per image.

    Args:
        gamma: Focusing exponent.
        alpha: Foreground weight in [0, 1] (background ``1 - alpha``), or None.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over images.

    Shape: as :class:`BinaryCrossEntropyLoss`.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None, reduction: str = "mean") -> None:
        super().__init__()
        if gamma < 0:
            raise ConfigError("loss.gamma", f"must be >= 0, got {gamma}")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ConfigError("loss.alpha", f"must lie in [0, 1], got {alpha}")
        self.gamma = float(gamma)
        self.alpha = None if alpha is None else float(alpha)
        self.reduction = check_reduction(reduction)
        self._focal = _SmpFocalLoss(mode="binary", alpha=self.alpha, gamma=self.gamma, reduction="none")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        flat_logits, flat_target = _flatten(logits, target, type(self).__name__)
        pixel = self._focal(flat_logits, flat_target).reshape(flat_logits.shape)
        return _reduce(pixel.mean(dim=1), self.reduction)


class ComboLoss(nn.Module):
    """Combo loss (Taghanaki et al. 2019; seed 002 §3): ``alpha * WCE - (1 - alpha) * Dice``.

    ``WCE = -mean(beta * y * log p + (1 - beta) * (1 - y) * log(1 - p))`` over the pixels
    (beta > 0.5 penalises false negatives more), ``Dice = (2 tp + smooth) / (sum p +
    sum y + smooth)``. The loss lies in ``[-(1 - alpha), +inf)``; lower is better.

    Args:
        alpha: Share of the cross-entropy term (seed 002's ``CE_ratio``), in [0, 1].
        beta: Weight of the foreground term of the cross entropy, in [0, 1].
        smooth: Dice smoothing (keeps empty truths defined).
        per_image: Dice and cross entropy per image, or pooled over the batch.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over images.

    Shape: as :class:`TverskyLoss`.
    """

    def __init__(self, alpha: float = 0.5, beta: float = 0.5, smooth: float = 1.0, per_image: bool = False,
                 reduction: str = "mean") -> None:
        super().__init__()
        for name, value in (("alpha", alpha), ("beta", beta)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"loss.{name}", f"must lie in [0, 1], got {value}")
        self.alpha, self.beta, self.smooth = float(alpha), float(beta), float(smooth)
        self.per_image = bool(per_image)
        self.reduction = check_reduction(reduction)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        flat_logits, flat_target = _flatten(logits, target, type(self).__name__)
        if not self.per_image:
            flat_logits, flat_target = flat_logits.reshape(1, -1), flat_target.reshape(1, -1)
        prob = torch.sigmoid(flat_logits)
        wce = -(self.beta * flat_target * F.logsigmoid(flat_logits)
                + (1 - self.beta) * (1 - flat_target) * F.logsigmoid(-flat_logits)).mean(dim=1)
        dice = (2 * (prob * flat_target).sum(dim=1) + self.smooth) / (
            prob.sum(dim=1) + flat_target.sum(dim=1) + self.smooth).clamp_min(1e-7)
        return _reduce(self.alpha * wce - (1 - self.alpha) * dice, self.reduction)


class SoftF1PixelLoss(nn.Module):
    """``1 - F1`` over pixels with probabilities as soft decisions (seed 002's F1 loss on masks).

    Each image (``per_image``) or the pooled batch is one "class" of
    :class:`cxrlab.losses.classification.SoftF1Loss`: ``F1 = 2 tp / (2 tp + fp + fn + eps)``
    with ``tp = sum(p y)`` etc. Unlike :class:`DiceLoss` no item is masked: an empty truth
    has F1 = 0 whatever is predicted (so it adds a constant, gradient-free 1).

    Args:
        per_image: F1 per image, or over the batch's pixels.
        eps: Added to the denominator.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over images.

    Shape: as :class:`TverskyLoss`.
    """

    def __init__(self, per_image: bool = False, eps: float = 1e-7, reduction: str = "mean") -> None:
        super().__init__()
        self.per_image = bool(per_image)
        self.reduction = check_reduction(reduction)
        self._f1 = SoftF1Loss(eps=eps, reduction="none")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        flat_logits, flat_target = _flatten(logits, target, type(self).__name__)
        if self.per_image:
            values = self._f1(flat_logits.t(), flat_target.t())           # pixels x images
        else:
            values = self._f1(flat_logits.reshape(-1, 1), flat_target.reshape(-1, 1))
        return _reduce(values, self.reduction)


class WeightedSumLoss(nn.Module):
    """``sum_k w_k * loss_k``: any segmentation losses of this module, by name, weighted.

    Args:
        weights: Loss name -> weight (names of :data:`SEGMENTATION_LOSSES`).
        options: Loss name -> keyword arguments of that loss.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over images (terms pooled over the
            batch add the same value to every image for ``"none"``).

    Example:
        >>> loss = WeightedSumLoss({"bce": 1.0, "dice": 0.5}, {"dice": {"smooth": 1.0}})
    """

    def __init__(self, weights: Mapping[str, float], options: Mapping[str, Mapping[str, Any]] | None = None,
                 reduction: str = "mean") -> None:
        super().__init__()
        if not weights:
            raise ConfigError("loss.weights", "name at least one loss")
        options = dict(options or {})
        unknown = sorted(set(options) - set(weights))
        if unknown:
            raise ConfigError("loss.options", f"options for losses without a weight: {unknown}")
        self.reduction = check_reduction(reduction)
        self.weights = {name: float(w) for name, w in weights.items()}
        self.terms = nn.ModuleDict({
            name: create_segmentation_loss(name, **{**dict(options.get(name, {})), "reduction": "none"})
            for name in self.weights})

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | int = 0
        for name, term in self.terms.items():
            total = total + self.weights[name] * term(logits, target)
        return _reduce(torch.as_tensor(total), self.reduction)


class BCEDiceFocalLoss(WeightedSumLoss):
    """The weighted BCE + Dice + focal sum (a common SIIM-ACR recipe).

    Args:
        bce_weight, dice_weight, focal_weight: Term weights.
        pos_weight: BCE foreground weight.
        gamma, alpha: Focal parameters.
        smooth: Dice smoothing (1 by default, so empty truths are scored).
        per_image: Dice per image or over the batch.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over images.
    """

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, focal_weight: float = 1.0,
                 pos_weight: float | None = None, gamma: float = 2.0, alpha: float | None = None,
                 smooth: float = 1.0, per_image: bool = False, reduction: str = "mean") -> None:
        super().__init__(
            {"bce": bce_weight, "dice": dice_weight, "focal": focal_weight},
            {"bce": {"pos_weight": pos_weight}, "dice": {"smooth": smooth, "per_image": per_image},
             "focal": {"gamma": gamma, "alpha": alpha}},
            reduction)


SEGMENTATION_LOSSES: dict[str, type[nn.Module]] = {
    "bce": BinaryCrossEntropyLoss,
    "dice": DiceLoss,
    "jaccard": JaccardLoss,
    "iou": JaccardLoss,
    "tversky": TverskyLoss,
    "focal_tversky": FocalTverskyLoss,
    "lovasz": LovaszHingeLoss,
    "focal": BinaryFocalLoss,
    "combo": ComboLoss,
    "softf1": SoftF1PixelLoss,
    "weighted_sum": WeightedSumLoss,
    "bce_dice_focal": BCEDiceFocalLoss,
}


def create_segmentation_loss(name: str, **kwargs: Any) -> nn.Module:
    """The segmentation loss called ``name`` (keys of :data:`SEGMENTATION_LOSSES`).

    Raises:
        ConfigError: Unknown name, or options the loss does not take.
    """
    if name not in SEGMENTATION_LOSSES:
        raise ConfigError("train.loss", f"unknown segmentation loss {name!r}; choose from "
                                        f"{sorted(SEGMENTATION_LOSSES)}")
    if kwargs.get("reduction", "mean") not in REDUCTIONS:
        raise ConfigError("loss.reduction", f"unknown reduction {kwargs['reduction']!r}; choose from {REDUCTIONS}")
    try:
        return SEGMENTATION_LOSSES[name](**kwargs)
    except TypeError as err:
        raise ConfigError("train.loss_options", f"loss {name!r}: {err}") from err
