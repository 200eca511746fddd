"""The Lightning module that trains a U-Net for one phase, and its best-checkpoint callback.

Training minimises a binary segmentation loss on the foreground logit (a two-channel
output's ``z1 - z0``, see :func:`cxrlab.models.segmentation.foreground_logits`).
Validation scores the masks at probability 0.5 (the argmax of a two-channel output)
with the competition's Dice per image, global Dice and IoU, and counts false-positive
masks on empty images. Forward pass, optimizers (encoder = body, decoder = head) and the gathered validation
buffers come from :class:`cxrlab.engine.base.TaskModule`, seeding and history from
:mod:`cxrlab.engine.callbacks`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn

from cxrlab.engine.base import TaskModule, mean_item_loss, per_item_loss
from cxrlab.engine.callbacks import BestCheckpoints
from cxrlab.engine.optim import OptimSpec
from cxrlab.errors import ConfigError
from cxrlab.metrics.segmentation import segmentation_summary
from cxrlab.models.segmentation import foreground_logits
from cxrlab.utils import atomic_write_json

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


class SegmentationModule(TaskModule):
    """Trains a :class:`~cxrlab.models.segmentation.SegmentationModel` with ``loss_fn``.

    Args:
        model: The U-Net (``body`` = encoder, ``head`` = decoder).
        loss_fn: A loss of :mod:`cxrlab.losses.segmentation` taking ``(logits, masks)``.
        optim: Optimizer/schedule of this phase (``freeze_body`` freezes the encoder).
        channels_last: Channels-last memory format (GPU).
        threshold: Probability threshold of the validation masks.

    Batches are :class:`~cxrlab.data.torch.ImageDataset` dicts with ``image``, ``mask``,
    ``mask_known`` and ``index``; items without a known mask are left out of loss and
    metrics. Validation keeps each image's ``(tp, fp, fn)`` and loss by dataset row, so
    Dice and IoU gathered from several ranks equal the one-process values.
    """

    progress_keys = ("val_dice_per_image", "val_loss")

    def __init__(self, model: nn.Module, loss_fn: nn.Module, optim: OptimSpec, channels_last: bool = False,
                 threshold: float = 0.5) -> None:
        super().__init__(model, loss_fn, optim, channels_last)
        self.threshold = float(threshold)

    @staticmethod
    def _known(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, masks, index = batch["image"], batch["mask"], torch.as_tensor(batch["index"])
        known = batch.get("mask_known")
        if known is not None and not bool(torch.as_tensor(known).all()):
            keep = torch.as_tensor(known, dtype=torch.bool, device=images.device)
            images, masks = images[keep], masks[keep]
            index = index[keep.to(index.device)]
        return images, masks, index

    def on_train_epoch_start(self) -> None:
        if self.optim.freeze_body:
            self.model.freeze_body(True)
        super().on_train_epoch_start()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        images, masks, _ = self._known(batch)
        if images.shape[0] == 0:
            return None
        logits = foreground_logits(self(images)).float()
        loss = self.loss_fn(logits, masks)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=images.shape[0],
                 sync_dist=True)
        return loss

    def validation_items(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        images, masks, index = self._known(batch)
        if images.shape[0] == 0:
            return None
        logits = foreground_logits(self(images)).float()
        counts = batch_counts(torch.sigmoid(logits), masks, self.threshold)
        return index, {"counts": counts, "loss": per_item_loss(self.loss_fn, logits, masks)}

    def validation_metrics(self, items: dict[str, np.ndarray]) -> dict[str, float]:
        tp, fp, fn = items["counts"].T
        summary = segmentation_summary(tp, fp, fn)
        return {
            "val_loss": mean_item_loss(items["loss"]),
            "val_dice_per_image": summary["dice_per_image"],
            "val_dice": summary["dice_global"],
            "val_iou": summary["iou_global"],
            "val_fp_masks_on_empty": float(summary["fp_masks_on_empty"]),
        }


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
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = dict(getattr(pl_module, "last_val", {}))
        if not metrics:
            return
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
