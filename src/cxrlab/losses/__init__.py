"""cxrlab.losses: classification losses on logits, NaN targets ignored where multi-label.

:func:`create_loss` builds one by name, as recipes name them.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from cxrlab.errors import ConfigError
from cxrlab.losses.auc import AUCMLoss, create_pesg, estimate_imratio
from cxrlab.losses.classification import (
    REDUCTIONS,
    BCELoss,
    FocalLoss,
    LabelSmoothingCrossEntropy,
    SoftF1Loss,
)

LOSSES: dict[str, type[nn.Module]] = {
    "bce": BCELoss,
    "focal": FocalLoss,
    "aucm": AUCMLoss,
    "softf1": SoftF1Loss,
    "ce": LabelSmoothingCrossEntropy,
}


def create_loss(name: str, **kwargs: Any) -> nn.Module:
    """The loss called ``name`` (``bce``, ``focal``, ``aucm``, ``softf1``, ``ce``) built with ``kwargs``.

    Raises:
        ConfigError: Unknown name, or options the loss does not take.

    Example:
        >>> create_loss("focal", gamma=2.0, alpha=0.25)
        FocalLoss()
    """
    if name not in LOSSES:
        raise ConfigError("train.loss", f"unknown loss {name!r}; choose from {sorted(LOSSES)}")
    try:
        return LOSSES[name](**kwargs)
    except TypeError as err:
        raise ConfigError("train.loss_options", f"loss {name!r}: {err}") from err


__all__ = [
    "LOSSES",
    "REDUCTIONS",
    "AUCMLoss",
    "BCELoss",
    "FocalLoss",
    "LabelSmoothingCrossEntropy",
    "SoftF1Loss",
    "create_loss",
    "create_pesg",
    "estimate_imratio",
]
