"""Seed 003's multi-task loss: cross entropy on the 3-class head plus λ x reconstruction MSE.

``total = CE(logits, target) + λ · MSE(reconstruction, image ⊙ dilated lesion mask)``
with λ = 0.8 (seed 003 §3.3.4, Table 5). The reconstruction target
(:func:`reconstruction_target`) is the input image inside the dilated lesion mask and
zero outside it, so the decoder must learn *where* the lesion is (zero elsewhere) and
*what* it looks like (the intensities inside). Images without a known mask (weak
labels, or a hard label whose mask is missing) contribute no MSE; a normal image has a
known, empty mask and its target is all zeros.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cxrlab.errors import ConfigError, InputError
from cxrlab.losses.classification import check_reduction

IGNORE_INDEX = -100
DEFAULT_LAMBDA = 0.8


def reconstruction_target(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The decoder's target: ``image`` where ``mask`` is set, exactly 0 elsewhere.

    Args:
        image: ``(B, 1, H, W)`` gray image in [0, 1].
        mask: ``(B, 1, H, W)`` dilated lesion mask (0/1 or bool).
    """
    if image.shape != mask.shape:
        raise InputError(None, f"reconstruction target: image {tuple(image.shape)} and mask "
                               f"{tuple(mask.shape)} must have the same shape")
    return torch.where(mask > 0, image, torch.zeros_like(image))


class ScreeningLoss(nn.Module):
    """Cross entropy (normal / target / others) + ``lam`` x masked-reconstruction MSE.

    Args:
        lam: Weight λ of the MSE term (seed 003: 0.8; 0 = classification only).
        class_weight: Optional per-class CE weights ``[K]`` (buffer), as in
            :func:`torch.nn.functional.cross_entropy`.
        reduction: ``"mean"``: CE averaged over labelled entries (PyTorch's weighted mean
            when ``class_weight`` is given) plus λ x the MSE averaged over images with a
            known mask; ``"sum"``: both summed; ``"none"``: per image, CE (averaged over
            the image's labelled diseases for ``(B, D, K)`` logits) + λ x its MSE (0
            without a known mask).
        ignore_index: Target value that is left out (unknown label).

    Shape:
        - logits: ``(B, K)`` (one per-disease model) or ``(B, D, K)`` (shared encoder).
        - target: ``(B,)`` or ``(B, D)`` class indices (long).
        - recon, image, mask: ``(B, 1, H, W)``; ``recon=None`` (or ``lam=0``) drops the MSE.
        - mask_known: ``(B,)`` bool; None = every mask known.
        - output: scalar, or ``(B,)`` for ``"none"``.

    Example:
        >>> loss = ScreeningLoss(lam=0.8)
        >>> logits = torch.zeros(2, 3, requires_grad=True)
        >>> recon = torch.zeros(2, 1, 8, 8, requires_grad=True)
        >>> image, mask = torch.rand(2, 1, 8, 8), torch.zeros(2, 1, 8, 8)
        >>> loss(logits, torch.tensor([0, 1]), recon, image, mask).backward()
    """

    def __init__(self, lam: float = DEFAULT_LAMBDA, class_weight: Sequence[float] | None = None,
                 reduction: str = "mean", ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        if not isinstance(lam, (int, float)) or isinstance(lam, bool) or lam < 0:
            raise ConfigError("loss.lam", f"λ must be a number >= 0, got {lam!r}")
        self.lam = float(lam)
        self.reduction = check_reduction(reduction)
        self.ignore_index = int(ignore_index)
        weight = None if class_weight is None else torch.as_tensor(class_weight, dtype=torch.float32)
        self.register_buffer("class_weight", weight)

    def terms(self, logits: torch.Tensor, target: torch.Tensor,
              recon: torch.Tensor | None = None, image: torch.Tensor | None = None,
              mask: torch.Tensor | None = None, mask_known: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The CE and MSE terms, each reduced as :attr:`reduction` says (MSE unweighted)."""
        ce = self._cross_entropy(logits, target)
        if recon is None or self.lam == 0.0:
            mse = torch.zeros_like(ce)
            return ce, mse
        if image is None or mask is None:
            raise InputError(None, "ScreeningLoss: a reconstruction needs the image and its mask")
        goal = reconstruction_target(image.to(recon.dtype), mask)
        if recon.shape != goal.shape:
            raise InputError(None, f"ScreeningLoss: reconstruction {tuple(recon.shape)} and "
                                   f"target {tuple(goal.shape)} differ in shape")
        per_image = (recon - goal).square().flatten(1).mean(dim=1)
        known = (torch.ones_like(per_image) if mask_known is None
                 else mask_known.to(per_image.device, per_image.dtype).reshape(-1))
        per_image = per_image * known
        if self.reduction == "none":
            return ce, per_image
        if self.reduction == "sum":
            return ce, per_image.sum()
        return ce, per_image.sum() / known.sum().clamp_min(1.0)

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                recon: torch.Tensor | None = None, image: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, mask_known: torch.Tensor | None = None
                ) -> torch.Tensor:
        ce, mse = self.terms(logits, target, recon, image, mask, mask_known)
        return ce + self.lam * mse

    def _cross_entropy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.ndim not in (2, 3) or target.shape != logits.shape[:-1]:
            raise InputError(None, f"ScreeningLoss: logits {tuple(logits.shape)} need targets of "
                                   f"shape {tuple(logits.shape[:-1])}, got {tuple(target.shape)}")
        target = target.long()
        flat_logits = logits.reshape(-1, logits.shape[-1])
        flat_target = target.reshape(-1)
        weight = None if self.class_weight is None else self.class_weight.to(logits.dtype)
        if self.reduction != "none":
            labelled = flat_target != self.ignore_index
            if not bool(labelled.any()):
                return flat_logits.sum() * 0.0     # keeps the graph, no NaN
            return F.cross_entropy(flat_logits, flat_target, weight=weight,
                                   ignore_index=self.ignore_index, reduction=self.reduction)
        per_entry = F.cross_entropy(flat_logits, flat_target, weight=weight,
                                    ignore_index=self.ignore_index, reduction="none")
        per_entry = per_entry.reshape(target.shape)
        if logits.ndim == 2:
            return per_entry
        labelled = (target != self.ignore_index).to(per_entry.dtype)
        return per_entry.sum(dim=1) / labelled.sum(dim=1).clamp_min(1.0)
