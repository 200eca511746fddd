"""The Lightning module that trains a U-Net for one phase, and its best-checkpoint callback.

Training minimises a binary segmentation loss on the foreground logit (a two-channel
output's ``z1 - z0``, see :func:`cxrlab.models.segmentation.foreground_logits`).
Validation scores the masks at probability 0.5 (the argmax of a two-channel output)
with the competition's Dice per image, global Dice and IoU, and counts false-positive
masks on empty images. Optimizers and schedules come from
:func:`cxrlab.engine.optim.build_optimizer` (encoder = body, decoder = head), seeding and
history from :mod:`cxrlab.engine.callbacks`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from cxrlab.engine.callbacks import BestCheckpoints
from cxrlab.engine.optim import OptimSpec
from cxrlab.errors import ConfigError
from cxrlab.metrics.segmentation import segmentation_summary
from cxrlab.models.segmentation import foreground_logits

MONITORS: dict[str, tuple[str, str]] = {
    "dice_per_image": ("val_dice_per_image", "max"),
    "dice": ("val_dice", "max"),
    "loss": ("val_loss", "min"),
}
"""Recipe name -> (metric key, direction). The classification default ``auroc`` is read
as ``dice_per_image``, its segmentation counterpart."""


def monitor_key(name: str) -> tuple[str, str]:
    """The metric key and direction of ``train.monitor`` for segmentation.

    Raises:
        ConfigError: Not a segmentation monitor.
    """
    if name == "auroc":
        name = "dice_per_image"
    if name not in MONITORS:
        raise ConfigError("train.monitor", f"unknown segmentation monitor {name!r}; choose from {sorted(MONITORS)}")
    return MONITORS[name]


def batch_counts(probs: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Per-image ``(tp, fp, fn)`` of ``probs > threshold`` against 0/1 masks, int64 ``(B, 3)``."""
    pred = (probs > threshold).reshape(probs.shape[0], -1)
    truth = (masks > 0.5).reshape(masks.shape[0], -1)
    tp = (pred & truth).sum(dim=1)
    return torch.stack([tp, pred.sum(dim=1) - tp, truth.sum(dim=1) - tp], dim=1)


class SegmentationModule(L.LightningModule):
    """Trains a :class:`~cxrlab.models.segmentation.SegmentationModel` with ``loss_fn``.

    Args:
        model: The U-Net (``body`` = encoder, ``head`` = decoder).
        loss_fn: A loss of :mod:`cxrlab.losses.segmentation` taking ``(logits, masks)``.
        optim: Optimizer/schedule of this phase (``freeze_body`` freezes the encoder).
        channels_last: Channels-last memory format (GPU).
        threshold: Probability threshold of the validation masks.

    Batches are :class:`~cxrlab.data.torch.ImageDataset` dicts with ``image``, ``mask``
    and ``mask_known``; items without a known mask are left out of loss and metrics.
    """

    def __init__(self, model: nn.Module, loss_fn: nn.Module, optim: OptimSpec, channels_last: bool = False,
                 threshold: float = 0.5) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.optim = optim
        self.channels_last = channels_last
        self.threshold = float(threshold)
        self._val_counts: list[torch.Tensor] = []
        self._val_loss: list[torch.Tensor] = []
        self.last_val: dict[str, float] = {}
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)

    @staticmethod
    def _known(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        images, masks = batch["image"], batch["mask"]
        known = batch.get("mask_known")
        if known is not None and not bool(torch.as_tensor(known).all()):
            keep = torch.as_tensor(known, dtype=torch.bool, device=images.device)
            images, masks = images[keep], masks[keep]
        return images, masks

    def on_train_epoch_start(self) -> None:
        if self.optim.freeze_body:
            self.model.freeze_body(True)
        if self.current_epoch in self.optim.decay_epochs:
            for group in self.optimizers().optimizer.param_groups:
                group["lr"] /= 10.0

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        images, masks = self._known(batch)
        if images.shape[0] == 0:
            return None
        logits = foreground_logits(self(images)).float()
        loss = self.loss_fn(logits, masks)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=images.shape[0],
                 sync_dist=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_counts, self._val_loss = [], []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images, masks = self._known(batch)
        if images.shape[0] == 0:
            return
        logits = foreground_logits(self(images)).float()
        self._val_loss.append(self.loss_fn(logits, masks).detach() * images.shape[0])
        self._val_counts.append(batch_counts(torch.sigmoid(logits), masks, self.threshold).detach())

    def on_validation_epoch_end(self) -> None:
        if not self._val_counts:
            return
        counts = torch.cat(self._val_counts)
        loss_sum = torch.stack(self._val_loss).sum()
        if self.trainer.world_size > 1:
            counts = self.all_gather(counts).reshape(-1, 3)
            loss_sum = self.all_gather(loss_sum).sum()
        tp, fp, fn = counts.cpu().numpy().T
        summary = segmentation_summary(tp, fp, fn)
        metrics = {
            "val_loss": float(loss_sum) / max(len(counts), 1),
            "val_dice_per_image": summary["dice_per_image"],
            "val_dice": summary["dice_global"],
            "val_iou": summary["iou_global"],
            "val_fp_masks_on_empty": float(summary["fp_masks_on_empty"]),
        }
        self.last_val = metrics
        for key, value in metrics.items():
            if not math.isnan(value):
                self.log(key, value, prog_bar=key in ("val_dice_per_image", "val_loss"), sync_dist=False)

    def configure_optimizers(self) -> Any:
        from cxrlab.engine.optim import build_optimizer

        spec = self.optim
        if spec.total_steps <= 0:
            spec = replace(spec, total_steps=int(self.trainer.estimated_stepping_batches))
        return build_optimizer(self.model, self.loss_fn, spec)


class SegmentationCheckpoints(BestCheckpoints):
    """Keeps ``best.pt`` by the recipe's monitor across phases and appends ``history.csv``.

    The best value so far lives in ``run_dir/best.json`` (so resumed runs keep
    comparing); the history rows are those of :class:`~cxrlab.engine.callbacks.BestCheckpoints`.

    Args:
        run_dir: The model's run directory.
        phase: Index of the current phase.
        save: ``save(path, metrics)`` writes a segmentation checkpoint.
        monitor: ``dice_per_image``, ``dice`` or ``loss``.
    """

    def __init__(self, run_dir: Path, phase: int, save: Callable[[Path, dict], None],
                 monitor: str = "dice_per_image") -> None:
        super().__init__(run_dir, phase, save)
        self.key, self.mode = monitor_key(monitor)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from cxrlab.utils import atomic_write_json

        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = dict(getattr(pl_module, "last_val", {}))
        if not metrics:
            return
        import json
        import time

        train_loss = trainer.callback_metrics.get("train_loss_epoch")
        self._append_history({
            "phase": self.phase, "epoch": trainer.current_epoch, "global_step": trainer.global_step,
            "train_loss": float(train_loss) if train_loss is not None else float("nan"),
            "seconds": round(time.perf_counter() - self._epoch_start, 3), **metrics})
        best = json.loads(self.best_path.read_text()) if self.best_path.is_file() else {}
        value = metrics.get(self.key, float("nan"))
        previous = best.get("value")
        better = previous is None or (value > previous if self.mode == "max" else value < previous)
        if not np.isnan(value) and better:
            self.save(self.run_dir / "best.pt", metrics)
            atomic_write_json(self.best_path, {"monitor": self.key, "value": value, "phase": self.phase,
                                               "epoch": trainer.current_epoch, "global_step": trainer.global_step})
