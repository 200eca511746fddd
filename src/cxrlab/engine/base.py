"""The Lightning module every image task trains with: :class:`TaskModule`.

It owns what the task modules used to repeat: the forward pass (channels-last when asked,
uint8 batches normalized once they are on the device when built with ``input_norm``),
the phase's learning-rate decays at epoch start, the optimizer and schedule built from an
:class:`~cxrlab.engine.optim.OptimSpec`, and the validation buffers (a
:class:`~cxrlab.engine.metrics.Cumulative` of per-item values, gathered from every rank
with the samplers' padding repeats dropped). A task module says what one validation batch
contributes per item (:meth:`TaskModule.validation_items`) and how the aggregated items
score (:meth:`TaskModule.validation_metrics`); the training step stays its own.

``val_loss`` is the mean over validation items of each item's own loss (the loss function
applied to that item alone, items without a known target left out): it does not depend on
the batch size or on how the items were spread over ranks, so under DDP it equals the
one-process value exactly. For losses that decompose over items (BCE, focal, per-image
segmentation losses) it is the usual mean; for batch-level losses (soft-F1, AUC-M, a
batch-global Dice) it is their per-image value, a different number than the batch loss
the optimizer saw.

Seeding stays a callback (:class:`~cxrlab.engine.callbacks.EpochSeed`): it must run before
every other epoch-start hook and also serves the volume tasks' own modules.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from cxrlab.data.torch import normalize_batch
from cxrlab.engine.metrics import Cumulative
from cxrlab.engine.optim import OptimSpec, build_optimizer


def per_item_loss(loss_fn: nn.Module, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``loss_fn`` applied to every item of a batch on its own, float32 ``(B,)``."""
    with torch.no_grad():
        values = [loss_fn(outputs[i:i + 1], targets[i:i + 1]).float().reshape(()) for i in range(outputs.shape[0])]
    if not values:
        return torch.zeros(0, device=outputs.device)
    return torch.stack(values)


def mean_item_loss(losses: np.ndarray) -> float:
    """Mean of the finite per-item losses (NaN when there is none)."""
    finite = np.asarray(losses, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return float(finite.mean()) if finite.size else float("nan")


class TaskModule(L.LightningModule):
    """Base of the task modules: forward, LR decays, optimizers, gathered validation.

    Args:
        model: A network with ``body`` and ``head`` (the optimizer's parameter groups).
        loss_fn: The phase's loss, taking ``(outputs, targets)``.
        optim: Optimizer/schedule of this phase.
        channels_last: Convert inputs and model to channels-last memory format.
        input_norm: ``(channels, normalization)`` of loaders that ship uint8 images
            (:class:`~cxrlab.data.torch.ImageDataset` with ``normalize=False``): a uint8
            ``batch["image"]`` is normalized once it is on the module's device
            (:func:`~cxrlab.data.torch.normalize_batch`), so the host-to-device copy
            moves bytes, not floats. Float batches pass through untouched.

    Subclasses implement ``training_step``, :meth:`validation_items` and
    :meth:`validation_metrics`; ``progress_keys`` names the metrics shown in the
    progress bar.
    """

    progress_keys: tuple[str, ...] = ("val_loss",)

    def __init__(self, model: nn.Module, loss_fn: nn.Module, optim: OptimSpec, channels_last: bool = False,
                 input_norm: tuple[int, str] | None = None) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.optim = optim
        self.channels_last = channels_last
        self.input_norm = input_norm
        self.val_items = Cumulative()
        self.last_val: dict[str, float] = {}
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if (self.input_norm is not None and isinstance(batch, dict)
                and isinstance(batch.get("image"), torch.Tensor) and batch["image"].dtype == torch.uint8):
            channels, normalization = self.input_norm
            batch = {**batch, "image": normalize_batch(batch["image"], channels, normalization)}
        return batch

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)

    def on_train_epoch_start(self) -> None:
        if self.current_epoch in self.optim.decay_epochs:
            optimizer = self.optimizers().optimizer
            if hasattr(optimizer, "update_regularizer"):     # PESG: LibAUC's stage decay
                optimizer.update_regularizer(decay_factor=10)
            else:
                for group in optimizer.param_groups:
                    group["lr"] /= 10.0

    # ------------------------------------------------------------------ validation
    def validation_items(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        """What one validation batch contributes: ``(dataset rows, {name: per-item values})``.

        Include ``loss`` (per item, NaN where unknown) for ``val_loss``; None skips the batch.
        """
        raise NotImplementedError

    def validation_metrics(self, items: dict[str, np.ndarray]) -> dict[str, float]:
        """Metrics of the aggregated validation items (each row once, sorted by row)."""
        raise NotImplementedError

    def on_validation_epoch_start(self) -> None:
        self.val_items.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        contribution = self.validation_items(batch)
        if contribution is not None:
            index, values = contribution
            self.val_items.append(index, **values)

    def on_validation_epoch_end(self) -> None:
        items = self.val_items.aggregate()      # collective under DDP: every rank calls it
        if not len(items["index"]):
            return
        metrics = self.validation_metrics(items)
        self.last_val = metrics
        for key, value in metrics.items():
            if not math.isnan(value):
                self.log(key, value, prog_bar=key in self.progress_keys, sync_dist=False)

    # ------------------------------------------------------------------ optimizers
    def configure_optimizers(self) -> Any:
        spec = self.optim
        if spec.total_steps <= 0:
            spec = replace(spec, total_steps=int(self.trainer.estimated_stepping_batches))
        return build_optimizer(self.model, self.loss_fn, spec)
