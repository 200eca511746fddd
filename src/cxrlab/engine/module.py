"""The Lightning module that trains a classifier for one phase of a recipe.

The model sees images; the metrics see studies: validation predictions are aggregated
to studies by their maximum (seed 001: "the model outputs the maximum probability
across the views") before AUROC is computed.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from torch import nn

from cxrlab.engine.optim import OptimSpec, build_optimizer
from cxrlab.metrics.classification import auroc, study_level

log = logging.getLogger(__name__)


class ClassifierModule(L.LightningModule):
    """Trains ``model`` with ``loss_fn`` on the label columns ``label_columns``.

    Args:
        model: A :class:`cxrlab.models.classifier.Classifier` (body + head).
        loss_fn: A loss taking ``(logits, targets)`` with NaN targets ignored.
        task_names: Names of the trained classes, in output order.
        label_columns: Columns of the batch's ``labels`` that hold those classes.
        item_study_ids: Study id of every item of the source dataset, indexed by the
            batch's ``index``; used to aggregate validation predictions to studies.
        item_labels: Labels (task columns, NaN = unknown) of every item of the source
            dataset, indexed like ``item_study_ids``.
        optim: Optimizer/schedule of this phase.
        channels_last: Convert inputs and model to channels-last memory format.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        task_names: Sequence[str],
        label_columns: Sequence[int],
        item_study_ids: np.ndarray,
        item_labels: np.ndarray,
        optim: OptimSpec,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.task_names = list(task_names)
        self.register_buffer("label_columns", torch.as_tensor(list(label_columns)), persistent=False)
        self.item_study_ids = np.asarray(item_study_ids)
        self.item_labels = np.asarray(item_labels, dtype=np.float64)
        self.optim = optim
        self.channels_last = channels_last
        self._val_probs: list[torch.Tensor] = []
        self._val_index: list[torch.Tensor] = []
        self._val_loss: list[torch.Tensor] = []
        self.last_val: dict[str, float] = {}
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    # ------------------------------------------------------------------ steps
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)

    def _targets(self, batch: dict) -> torch.Tensor:
        return batch["labels"].index_select(1, self.label_columns.to(batch["labels"].device))

    def on_train_epoch_start(self) -> None:
        if self.current_epoch in self.optim.decay_epochs:
            optimizer = self.optimizers().optimizer
            if hasattr(optimizer, "update_regularizer"):
                optimizer.update_regularizer(decay_factor=10)
            else:
                for group in optimizer.param_groups:
                    group["lr"] /= 10.0

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        loss = self.loss_fn(logits.float(), self._targets(batch))
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True,
                 batch_size=logits.shape[0], sync_dist=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch["image"]).float()
        targets = self._targets(batch)
        self._val_loss.append(self.loss_fn(logits, targets).detach() * logits.shape[0])
        self._val_probs.append(torch.sigmoid(logits).detach())
        self._val_index.append(batch["index"].detach())

    def on_validation_epoch_start(self) -> None:
        self._val_probs, self._val_index, self._val_loss = [], [], []

    def on_validation_epoch_end(self) -> None:
        if not self._val_probs:
            return
        probs = torch.cat(self._val_probs)
        index = torch.cat(self._val_index)
        loss_sum = torch.stack(self._val_loss).sum()
        if self.trainer.world_size > 1:
            probs = self.all_gather(probs).reshape(-1, probs.shape[-1])
            index = self.all_gather(index).reshape(-1)
            loss_sum = self.all_gather(loss_sum).sum()
        probs_np = probs.cpu().numpy()
        index_np = index.cpu().numpy()
        # Distributed samplers pad with repeats: keep each item once.
        index_np, first = np.unique(index_np, return_index=True)
        probs_np = probs_np[first]
        metrics = self.study_metrics(index_np, probs_np)
        metrics["val_loss"] = float(loss_sum) / max(len(index), 1)
        self.last_val = metrics
        for key, value in metrics.items():
            if not math.isnan(value):
                self.log(key, value, prog_bar=key in ("val_auroc", "val_loss"), sync_dist=False)

    def study_metrics(self, index: np.ndarray, probs: np.ndarray) -> dict[str, float]:
        """Per-task and mean study-level AUROC of validation predictions."""
        _, study_y, study_p = study_level(self.item_study_ids[index], self.item_labels[index], probs)
        out: dict[str, float] = {}
        values = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for k, name in enumerate(self.task_names):
                value = auroc(study_y[:, k], study_p[:, k])
                out[f"val_auroc/{name}"] = float(value)
                if not math.isnan(value):
                    values.append(value)
        out["val_auroc"] = float(np.mean(values)) if values else float("nan")
        return out

    # ------------------------------------------------------------ optimizers
    def configure_optimizers(self):
        from dataclasses import replace



        spec = self.optim
        if spec.total_steps <= 0:
            spec = replace(spec, total_steps=int(self.trainer.estimated_stepping_batches))
        return build_optimizer(self.model, self.loss_fn, spec)
