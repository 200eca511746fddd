"""The Lightning module that trains a classifier for one phase of a recipe.

The model sees images; the metrics see studies: validation predictions are aggregated
to studies by their maximum (seed 001: "the model outputs the maximum probability
across the views") before AUROC is computed. Forward pass, optimizers and the gathered
validation buffers come from :class:`cxrlab.engine.base.TaskModule`.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from cxrlab.engine.base import TaskModule, mean_item_loss, per_item_loss
from cxrlab.engine.optim import OptimSpec
from cxrlab.metrics.classification import auroc, study_level

log = logging.getLogger(__name__)


class ClassifierModule(TaskModule):
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
        input_norm: ``(channels, normalization)`` when the loaders ship uint8 images
            (see :class:`~cxrlab.engine.base.TaskModule`).
    """

    progress_keys = ("val_auroc", "val_loss")

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
        input_norm: tuple[int, str] | None = None,
    ) -> None:
        super().__init__(model, loss_fn, optim, channels_last, input_norm)
        self.task_names = list(task_names)
        self.register_buffer("label_columns", torch.as_tensor(list(label_columns)), persistent=False)
        self.item_study_ids = np.asarray(item_study_ids)
        self.item_labels = np.asarray(item_labels, dtype=np.float64)

    # ------------------------------------------------------------------ steps
    def _targets(self, batch: dict) -> torch.Tensor:
        return batch["labels"].index_select(1, self.label_columns.to(batch["labels"].device))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        loss = self.loss_fn(logits.float(), self._targets(batch))
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True,
                 batch_size=logits.shape[0], sync_dist=True)
        return loss

    def validation_items(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self(batch["image"]).float()
        targets = self._targets(batch)
        losses = per_item_loss(self.loss_fn, logits, targets)
        losses = torch.where(torch.isnan(targets).all(dim=1), torch.nan, losses)
        return batch["index"], {"prob": torch.sigmoid(logits), "loss": losses}

    def validation_metrics(self, items: dict[str, np.ndarray]) -> dict[str, float]:
        metrics = self.study_metrics(items["index"], items["prob"])
        metrics["val_loss"] = mean_item_loss(items["loss"])
        return metrics

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
