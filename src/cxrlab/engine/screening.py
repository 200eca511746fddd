"""Training loop of the seed-003 screening networks (plain PyTorch, one network at a time).

Why not Lightning: the seed's plateau rule, best-state bookkeeping and frozen decoder fit a
short loop, and the loop's single-process numbers are pinned by the golden predictions
(``tests/inference/test_golden.py``). Under DDP it runs as a
:class:`~torch.nn.parallel.DistributedDataParallel` in a process group started by
:func:`cxrlab.engine.distributed.start_group`, on sharded loaders, with validation metrics
gathered from every rank (:class:`~cxrlab.engine.metrics.Cumulative`); each phase writes
an epoch-end checkpoint that ``resume`` continues from.

Seed 003 §3.3.4 trains each per-disease network in two phases:

1. **hard labels** (radiologist labels with lesion masks): classification and
   reconstruction together, loss ``CE + λ·MSE``;
2. **weak labels** (no masks): the reconstruction decoder is frozen and only the
   classification path learns (``CE``). The seed's sentence says only the FC layer is
   trained; :attr:`PhaseSchedule.train_encoder` chooses between that (False) and
   training the encoder too (True).

Optimizer: Adam (lr 1e-3, β₁ 0.9 — the seed's "momentum 0.9" — weight decay 5e-4).
:class:`PlateauRule` is the seed's schedule: when the validation metric has not improved
for ``patience`` epochs, the learning rate is halved; once it is below ``min_lr`` and the
metric stalls again, training stops (seed: patience 50, floor 1e-4, at most 300 epochs).
The weights of the best validation epoch are kept; phase 2 starts from phase 1's best and
keeps it unless the weak labels improve the validation metric.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from cxrlab.engine.distributed import world
from cxrlab.engine.metrics import Cumulative
from cxrlab.errors import ConfigError
from cxrlab.losses.screening import ScreeningLoss
from cxrlab.metrics.classification import auroc
from cxrlab.models.multitask import MultiTaskNet, SharedEncoderNet
from cxrlab.utils import atomic_torch_save

log = logging.getLogger(__name__)

Network = MultiTaskNet | SharedEncoderNet
MONITORS = ("loss", "auroc")


@dataclass(frozen=True)
class PhaseSchedule:
    """Optimizer and stopping rule of one phase.

    Attributes:
        max_epochs: Upper bound on epochs (seed: 300). 0 skips the phase.
        lr: Initial learning rate (seed: 1e-3).
        weight_decay: Adam weight decay (seed: 5e-4).
        betas: Adam betas (seed: momentum 0.9).
        patience: Epochs without improvement before the LR is halved (seed: 50).
        factor: LR multiplier on a plateau (seed: 0.5).
        min_lr: Floor below which a further plateau stops training (seed: 1e-4).
        monitor: ``loss`` (validation cross entropy, lower is better) or ``auroc``
            (validation normal-vs-abnormal AUROC of ``1 - p(normal)``, higher is better).
        train_encoder: Phase 2 only: also train the encoder (False = head only).
    """

    max_epochs: int = 300
    lr: float = 1e-3
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    patience: int = 50
    factor: float = 0.5
    min_lr: float = 1e-4
    monitor: str = "loss"
    train_encoder: bool = True

    def __post_init__(self) -> None:
        if self.monitor not in MONITORS:
            raise ConfigError("train.monitor", f"must be one of {MONITORS}, got {self.monitor!r}")
        if self.max_epochs < 0 or self.patience < 1 or not 0 < self.factor < 1 or self.lr <= 0:
            raise ConfigError("train", f"invalid schedule {self}: need max_epochs >= 0, "
                                       "patience >= 1, 0 < factor < 1, lr > 0")


class PlateauRule:
    """Seed 003's learning-rate rule as a small state machine.

    :meth:`step` takes the epoch's validation metric and returns ``"improved"``,
    ``"wait"``, ``"halve"`` (the caller multiplies the LR by ``factor``) or ``"stop"``.

    Example:
        >>> rule = PlateauRule(lr=1e-3, patience=1, factor=0.5, min_lr=4e-4, mode="min")
        >>> [rule.step(v) for v in (1.0, 1.0, 1.0, 1.0)]
        ['improved', 'halve', 'halve', 'stop']
    """

    def __init__(self, lr: float, patience: int, factor: float, min_lr: float,
                 mode: str = "min", best: float | None = None) -> None:
        self.lr, self.patience, self.factor, self.min_lr = lr, patience, factor, min_lr
        self.sign = 1.0 if mode == "min" else -1.0
        self.best = math.inf if best is None else self.sign * best
        self.stall = 0

    def step(self, metric: float) -> str:
        value = self.sign * float(metric) if math.isfinite(metric) else math.inf
        if value < self.best - 1e-9:
            self.best, self.stall = value, 0
            return "improved"
        self.stall += 1
        if self.stall < self.patience:
            return "wait"
        self.stall = 0
        if self.lr < self.min_lr:
            return "stop"
        self.lr *= self.factor
        return "halve"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; any other name as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _batch_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v)
            for k, v in batch.items()}


@torch.no_grad()
def predict_logits(model: Network, loader: DataLoader, device: torch.device | str = "cpu"
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Logits of every item (decoder skipped) and the item indices, in loader order.

    Returns:
        ``(logits, indices)``: ``float32 [N, K]`` (per-disease net) or ``[N, D, K]``
        (shared net), and ``int64 [N]`` store rows.
    """
    model.eval()
    outputs, indices = [], []
    for batch in loader:
        logits, _ = model(batch["image"].to(device), reconstruct=False)
        outputs.append(logits.float().cpu())
        indices.append(torch.as_tensor(batch["index"]))
    if not outputs:
        return np.zeros((0,), np.float32), np.zeros(0, np.int64)
    return torch.cat(outputs).numpy(), torch.cat(indices).numpy().astype(np.int64)


def _item_ce(loss_fn: ScreeningLoss) -> ScreeningLoss:
    """The same loss reducing to one cross entropy per image (mean over its labelled diseases)."""
    return ScreeningLoss(lam=loss_fn.lam, class_weight=loss_fn.class_weight, reduction="none",
                         ignore_index=loss_fn.ignore_index)


@torch.no_grad()
def validation_metrics(model: Network, loader: DataLoader, loss_fn: ScreeningLoss,
                       device: torch.device | str = "cpu") -> dict[str, float]:
    """Validation cross entropy and normal-vs-abnormal AUROC of ``1 - p(normal)``.

    For 3-class heads ``p(normal)`` is class 0; for 2-class heads the abnormal score is
    ``p(target)``. The shared network's score is the maximum over its diseases. The cross
    entropy is the mean over labelled entries. Per-item values go through a
    :class:`~cxrlab.engine.metrics.Cumulative`: under DDP (a sharded ``loader``) every rank
    gets the metrics of the whole validation set, each image counted once.
    """
    model.eval()
    per_item = _item_ce(loss_fn).to(device)
    items = Cumulative()
    for batch in loader:
        batch = _batch_to(batch, device)
        logits, _ = model(batch["image"], reconstruct=False)
        target = batch["target"]
        labelled = (target != loss_fn.ignore_index).reshape(target.shape[0], -1).sum(dim=1).float()
        ce, _ = per_item.terms(logits.float(), target)
        probs = logits.float().softmax(dim=-1)
        if logits.shape[-1] == 3:
            abnormal = 1.0 - probs[..., 0]
            is_abnormal = torch.where(target < 0, torch.nan, (target > 0).float())
        else:
            abnormal = probs[..., 1]
            is_abnormal = torch.where(target < 0, torch.nan, (target == 1).float())
        if abnormal.ndim == 2:      # shared net: any disease
            abnormal = abnormal.max(dim=1).values
            is_abnormal = torch.nan_to_num(is_abnormal, nan=-1.0).max(dim=1).values
            is_abnormal = torch.where(is_abnormal < 0, torch.nan, is_abnormal)
        items.append(batch["index"], ce_sum=ce * labelled, labelled=labelled, score=abnormal,
                     truth=is_abnormal)
    out = items.aggregate()
    if not len(out["index"]):
        return {"loss": math.nan, "auroc": math.nan}
    count = float(out["labelled"].sum())
    loss = float(out["ce_sum"].astype(np.float64).sum() / count) if count else math.nan
    y_true, y_score = out["truth"], out["score"]
    known = ~np.isnan(y_true)
    score = math.nan
    if known.any() and 0 < y_true[known].sum() < known.sum():
        score = auroc(y_true[known], y_score[known])
    return {"loss": loss, "auroc": score}


def _train_epoch(model: nn.Module, loader: DataLoader, loss_fn: ScreeningLoss,
                 optimizer: torch.optim.Optimizer, reconstruct: bool, device: torch.device
                 ) -> dict[str, float]:
    model.train()
    sums = {"loss": 0.0, "ce": 0.0, "mse": 0.0}
    n = 0
    for batch in loader:
        batch = _batch_to(batch, device)
        logits, recon = model(batch["image"], reconstruct=reconstruct)
        if reconstruct:
            known = batch["mask_known"]
            known = known if torch.is_tensor(known) else torch.as_tensor(known, device=device)
            ce, mse = loss_fn.terms(logits, batch["target"], recon, batch["unit"], batch["mask"],
                                    known)
        else:
            ce, mse = loss_fn.terms(logits, batch["target"])
        loss = ce + loss_fn.lam * mse
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        size = int(batch["image"].shape[0])
        n += size
        for key, value in (("loss", loss), ("ce", ce), ("mse", mse)):
            sums[key] += float(value.detach()) * size
    return {f"train_{k}": v / max(n, 1) for k, v in sums.items()}


def _save_phase(path: Path, state: dict[str, Any]) -> None:
    """Rank 0 writes the phase's epoch-end state atomically (the other ranks skip)."""
    if world()[1] == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(state, path)


def fit_phase(model: Network, train_loader: DataLoader, valid_loader: DataLoader,
              loss_fn: ScreeningLoss, schedule: PhaseSchedule, phase: str,
              device: torch.device | str = "cpu", best: float | None = None,
              on_epoch: Callable[[dict[str, Any]], None] | None = None,
              checkpoint: Path | None = None, resume: bool = False, name: str = "network"
              ) -> list[dict[str, Any]]:
    """Train one phase with the plateau rule; leaves the best epoch's weights in ``model``.

    Under an initialised process group (:func:`cxrlab.engine.distributed.start_group`) the
    network trains as a :class:`~torch.nn.parallel.DistributedDataParallel` on sharded
    loaders; the validation metrics, hence the plateau rule's decisions, are those of the
    whole validation set on every rank.

    Args:
        model: The network (changed in place).
        train_loader: Items of :class:`~cxrlab.data.screening.ScreeningItems`.
        valid_loader: Hard-labelled validation items (no augmentation).
        loss_fn: The combined loss (phase ``"weak"`` uses its CE term only).
        schedule: Optimizer and stopping settings.
        phase: ``"hard"`` (CE + λ·MSE, decoder trained) or ``"weak"`` (CE, decoder frozen).
        device: Where to train.
        best: Validation metric of the weights the phase starts from (phase 2 keeps
            them unless it improves on it); None evaluates them first.
        on_epoch: Called with each epoch's history row.
        checkpoint: Where rank 0 writes the phase's state after every epoch (weights,
            optimizer, plateau rule, best weights, history; atomic) and once more, marked
            done, at its end. None writes nothing.
        resume: Continue from ``checkpoint`` when it exists: a finished phase is not
            trained again, an interrupted one restarts at the epoch after the saved one.
        name: The network, for the log.

    Returns:
        History rows: phase, epoch, lr, train loss terms, validation loss/AUROC, action.
    """
    if phase not in ("hard", "weak"):
        raise ConfigError("phase", f"must be 'hard' or 'weak', got {phase!r}")
    device = torch.device(device)
    model.to(device)
    weak = phase == "weak"
    model.freeze_decoder(weak)
    model.freeze_encoder(weak and not schedule.train_encoder)
    mode = "min" if schedule.monitor == "loss" else "max"
    saved = (torch.load(checkpoint, map_location=device, weights_only=False)
             if resume and checkpoint is not None and checkpoint.is_file() else None)
    if saved is not None and saved["done"]:
        model.load_state_dict(saved["best_state"])
        model.freeze_encoder(False)
        model.freeze_decoder(False)
        log.info("%s phase %s already finished; weights loaded", name, phase)
        return list(saved["history"])
    if best is None and saved is None:
        best = validation_metrics(model, valid_loader, loss_fn, device)[schedule.monitor]
    rule = PlateauRule(schedule.lr, schedule.patience, schedule.factor, schedule.min_lr, mode,
                       best=best if best is not None and math.isfinite(best) else None)
    best_state = copy.deepcopy(model.state_dict())
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=schedule.lr, betas=tuple(schedule.betas),
                                 weight_decay=schedule.weight_decay)
    history: list[dict[str, Any]] = []
    start = 0
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        rule.__dict__.update(saved["rule"])
        best_state, history, start = saved["best_state"], list(saved["history"]), int(saved["epoch"]) + 1
        log.info("resuming %s phase %s at epoch %d", name, phase, start)
    size, _ = world()
    net: nn.Module = model
    if size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    stopped = bool(history) and history[-1]["action"] == "stop"
    for epoch in range(start, 0 if stopped else schedule.max_epochs):
        started = time.perf_counter()
        if hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        row: dict[str, Any] = {"phase": phase, "epoch": epoch, "lr": lr}
        row.update(_train_epoch(net, train_loader, loss_fn, optimizer, not weak, device))
        if size > 1:
            # DDP syncs BatchNorm statistics from rank 0 at the next training forward only: give
            # every rank rank 0's (those saved) before each validates its shard.
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer.data, src=0)
        valid = validation_metrics(model, valid_loader, loss_fn, device)
        row.update({"valid_loss": valid["loss"], "valid_auroc": valid["auroc"]})
        action = rule.step(valid[schedule.monitor])
        if action == "improved":
            best_state = copy.deepcopy(model.state_dict())
        elif action == "halve":
            for group in optimizer.param_groups:
                group["lr"] = rule.lr
        row.update(action=action, seconds=round(time.perf_counter() - started, 3))
        history.append(row)
        if checkpoint is not None:
            _save_phase(checkpoint, {"phase": phase, "epoch": epoch, "done": False, "model": model.state_dict(),
                                     "optimizer": optimizer.state_dict(), "rule": dict(rule.__dict__),
                                     "best_state": best_state, "history": history})
        if on_epoch is not None:
            on_epoch(row)
        if action == "stop":
            break
    if checkpoint is not None:      # the last epoch's weights stay in it, for checks against its history row
        _save_phase(checkpoint, {"phase": phase, "epoch": len(history) - 1, "done": True,
                                 "model": model.state_dict(), "best_state": best_state, "history": history})
    model.load_state_dict(best_state)
    model.freeze_encoder(False)
    model.freeze_decoder(False)
    return history


def train_network(model: Network, hard_loader: DataLoader, weak_loader: DataLoader | None,
                  valid_loader: DataLoader, loss_fn: ScreeningLoss, hard: PhaseSchedule,
                  weak: PhaseSchedule, device: torch.device | str = "cpu",
                  on_epoch: Callable[[dict[str, Any]], None] | None = None,
                  checkpoints: Path | None = None, resume: bool = False, name: str = "network"
                  ) -> list[dict[str, Any]]:
    """Both phases of seed 003: hard labels with masks, then weak labels, decoder frozen.

    Phase 2 is skipped when ``weak_loader`` is None or empty or ``weak.max_epochs`` is 0.
    ``checkpoints``: folder of the phases' epoch-end states (``hard.ckpt``, ``weak.ckpt``;
    see :func:`fit_phase` for ``resume``).
    """
    def ckpt(phase: str) -> Path | None:
        return None if checkpoints is None else Path(checkpoints) / f"{phase}.ckpt"

    history = fit_phase(model, hard_loader, valid_loader, loss_fn, hard, "hard", device,
                        on_epoch=on_epoch, checkpoint=ckpt("hard"), resume=resume, name=name)
    if weak_loader is not None and len(weak_loader.dataset) and weak.max_epochs > 0:
        start = validation_metrics(model, valid_loader, loss_fn, device)[weak.monitor]
        history += fit_phase(model, weak_loader, valid_loader, loss_fn, weak, "weak", device,
                             best=start, on_epoch=on_epoch, checkpoint=ckpt("weak"), resume=resume,
                             name=name)
    return history


# ----------------------------------------------------------------------------- inference cost
# Cost of the classification path (the decoder is never run at inference).


def measure_inference(nets: list[Any], size: int, channels: int = 1, batch_size: int = 1,
                      repeats: int = 3, device: str = "cpu", bf16: bool = False
                      ) -> dict[str, float]:
    """Inference cost of running ``nets`` (classification path, no decoder) on one batch.

    Returns:
        ``params`` (encoder + heads), ``gflops_per_image`` (PyTorch's flop counter),
        ``ms_per_batch`` (median of ``repeats`` timed runs after one warm-up) and
        ``ms_per_image``.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    dev = torch.device(device)
    x = torch.rand(batch_size, channels, size, size, device=dev)
    params = sum(p.numel() for net in nets for name, p in net.named_parameters()
                 if not name.startswith("decoder."))
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)

    def run() -> None:
        with torch.inference_mode(), autocast:
            for net in nets:
                net(x, reconstruct=False)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for net in nets:
        net.to(dev).eval()
    with FlopCounterMode(display=False) as counter:
        with torch.inference_mode():
            for net in nets:
                net(x[:1], reconstruct=False)
    run()
    times = []
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000.0)
    ms = float(np.median(times))
    return {"params": int(params), "gflops_per_image": counter.get_total_flops() / 1e9,
            "ms_per_batch": ms, "ms_per_image": ms / batch_size}


def compare_inference_cost(encoder: str = "densenet121", n_diseases: int = 13, size: int = 1024,
                           batch_sizes: Sequence[int] = (1,), num_classes: int = 3,
                           channels: int = 1, repeats: int = 3, device: str = "cpu",
                           bf16: bool = False) -> pd.DataFrame:
    """Per-disease ensemble (``n_diseases`` networks) vs shared encoder at ``size`` px,
    untrained weights (cost does not depend on them)."""
    small = (8, 8, 8, 8, 8, 8)      # decoder is never run at inference
    names = [f"d{k}" for k in range(n_diseases)]
    variants = {"ensemble": [MultiTaskNet(encoder, num_classes, channels, None, small)
                             for _ in names],
                "shared": [SharedEncoderNet(names, encoder, num_classes, channels, None, small)]}
    rows = []
    for batch in batch_sizes:
        for variant, nets in variants.items():
            cost = measure_inference(nets, size, channels, batch, repeats, device, bf16)
            rows.append({"variant": variant, "encoder": encoder, "diseases": n_diseases,
                         "size": size, "batch_size": batch, "device": device,
                         "bf16": bf16, **cost})
    return inference_cost_table(rows)


def inference_cost_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Cost rows as a table with ``time_vs_shared``: ms/image over the shared variant's at
    the same batch size."""
    frame = pd.DataFrame(rows)
    if frame.empty or "variant" not in frame:
        return frame
    ratios = []
    for _, row in frame.iterrows():
        shared = frame[(frame["variant"] == "shared") & (frame["batch_size"] == row["batch_size"])]
        ratios.append(row["ms_per_image"] / shared["ms_per_image"].iloc[0] if len(shared)
                      else float("nan"))
    return frame.assign(time_vs_shared=ratios)
