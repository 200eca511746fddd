"""Optimizers and learning-rate schedules for one training phase.

Parameter groups: body and head (discriminative learning rates), each split into
weights that get weight decay and norm/bias parameters that do not (fastai's default,
which seed 001 used). A frozen body contributes only what stays trainable (its
BatchNorm layers, as fastai's ``freeze()`` leaves them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cxrlab.errors import ConfigError

OPTIMIZERS = ("adam", "adamw", "radam", "sgd", "pesg")


SCHEDULES = ("onecycle", "constant", "cosine")


@dataclass(frozen=True)
class OptimSpec:
    """Optimizer and schedule of one phase.

    Attributes:
        optimizer: One of :data:`OPTIMIZERS`.
        lr_body: Maximum LR of the body (with ``freeze_body``: of what stays trainable
            in it, its BatchNorm layers).
        lr_head: Maximum LR of the head.
        freeze_body: Train the head only.
        betas: Adam betas.
        momentum: SGD/PESG momentum.
        weight_decay: Weight decay (decoupled for AdamW).
        epoch_decay: PESG's epoch-level regularizer.
        schedule: One of :data:`SCHEDULES`; ``onecycle`` also cycles momentum/beta1.
        pct_start: Warm-up share of the one-cycle schedule.
        total_steps: Optimizer steps in the phase (for the schedule); 0 = ask the
            trainer (``estimated_stepping_batches``).
        decay_epochs: Epochs of the phase at whose start the LR is divided by 10 (PESG:
            ``update_regularizer``).
    """

    optimizer: str
    lr_body: float
    lr_head: float
    freeze_body: bool
    betas: tuple[float, float] = (0.9, 0.99)
    momentum: float = 0.9
    weight_decay: float = 0.0
    epoch_decay: float = 2e-3
    schedule: str = "onecycle"
    pct_start: float = 0.25
    total_steps: int = 0
    decay_epochs: tuple[int, ...] = ()


def _split_decay(params: list[tuple[str, nn.Parameter]]) -> tuple[list, list]:
    decay, no_decay = [], []
    for name, param in params:
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return decay, no_decay


def param_groups(model: nn.Module, spec: OptimSpec) -> list[dict[str, Any]]:
    """Body/head × decay/no-decay groups with their maximum learning rates."""
    groups: list[dict[str, Any]] = []
    parts = [("body", list(model.body.named_parameters()), spec.lr_body),
             ("head", list(model.head.named_parameters()), spec.lr_head)]
    for part, named, lr in parts:
        decay, no_decay = _split_decay(named)
        if decay:
            groups.append({"params": decay, "lr": lr, "weight_decay": spec.weight_decay, "name": f"{part}"})
        if no_decay:
            groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{part}_no_decay"})
    if not groups:
        raise ConfigError("train.phases", "no trainable parameters in this phase")
    return groups


def build_optimizer(model: nn.Module, loss_fn: nn.Module, spec: OptimSpec) -> dict[str, Any]:
    """Optimizer plus a per-step LR scheduler, in Lightning's ``configure_optimizers`` form.

    Raises:
        ConfigError: Unknown optimizer/schedule, or PESG without an AUC-M loss.
    """
    if spec.optimizer not in OPTIMIZERS:
        raise ConfigError("train.optimizer", f"unknown optimizer {spec.optimizer!r}; choose from {OPTIMIZERS}")
    if spec.schedule not in SCHEDULES:
        raise ConfigError("train.schedule", f"unknown schedule {spec.schedule!r}; choose from {SCHEDULES}")
    if spec.optimizer == "pesg":
        from cxrlab.losses.auc import create_pesg

        if not hasattr(loss_fn, "a"):
            raise ConfigError("train.optimizer", "PESG optimizes the AUC-M loss: set the phase's loss to 'aucm'")
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = create_pesg(trainable, loss_fn, lr=spec.lr_head, epoch_decay=spec.epoch_decay,
                                weight_decay=spec.weight_decay, momentum=spec.momentum)
        # PESG keeps its own reference point; LibAUC uses a constant LR with stage decays.
        return {"optimizer": optimizer}
    groups = param_groups(model, spec)
    if spec.optimizer == "adam":
        optimizer = torch.optim.Adam(groups, betas=spec.betas)
    elif spec.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, betas=spec.betas)
    elif spec.optimizer == "radam":
        optimizer = torch.optim.RAdam(groups, betas=spec.betas)
    else:
        optimizer = torch.optim.SGD(groups, momentum=spec.momentum, nesterov=False)
    total = max(int(spec.total_steps), 1)
    if spec.schedule == "onecycle" and total >= 4:
        # Short smoke runs: keep at least two warm-up steps so the phases are non-empty.
        pct_start = min(max(spec.pct_start, 2.0 / total), 0.5)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in groups],
            total_steps=total,
            pct_start=pct_start,
            anneal_strategy="cos",
            cycle_momentum=True,
            base_momentum=0.85,
            max_momentum=0.95,
            div_factor=25.0,
            final_div_factor=1e4,
        )
    elif spec.schedule == "cosine" or spec.schedule == "onecycle":
        # (one-cycle over fewer than 4 steps degenerates to a cosine decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
