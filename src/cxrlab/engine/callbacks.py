"""Lightning callbacks: per-epoch seeding, best checkpoints across phases, history."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from cxrlab.data.samplers import EpochShuffleSampler, PositiveShareSampler
from cxrlab.utils import atomic_write, atomic_write_json

__all__ = ["BestCheckpoints", "EpochCheckpoint", "EpochSeed", "EpochShuffleSampler", "SamplerState",
           "checkpoint_start_epoch", "epoch_seed", "resume_checkpoint"]
# EpochShuffleSampler lives in cxrlab.data.samplers with the other samplers; named here
# for the task modules that import it from the engine.

log = logging.getLogger(__name__)


def epoch_seed(seed: int, phase: int, epoch: int) -> int:
    """The seed of one epoch: a pure function of (run seed, phase, epoch)."""
    return (seed * 1_000_003 + phase * 10_007 + epoch * 101) % (2**31 - 1)


class EpochSeed(L.Callback):
    """Re-seed every RNG at the start of each training epoch.

    An epoch then depends only on the weights and optimizer state it starts from, so a
    run resumed from an epoch-end checkpoint ends with exactly the weights of an
    uninterrupted one (on CPU in deterministic mode).
    """

    def __init__(self, seed: int, phase: int) -> None:
        self.seed = seed
        self.phase = phase

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = epoch_seed(self.seed, self.phase, trainer.current_epoch) + trainer.global_rank
        random.seed(value)
        np.random.seed(value)
        torch.manual_seed(value)


class BestCheckpoints(L.Callback):
    """Keeps the best model by validation AUROC and by validation loss, across phases.

    After each validation the module's ``last_val`` metrics are compared with the best
    so far (stored in ``run_dir/best.json``, so a resumed run continues the
    comparison); an improvement writes ``best_auroc.pt`` / ``best_loss.pt`` through
    ``save`` (atomic). Every epoch appends a row to ``history.csv``.

    Args:
        run_dir: The run directory.
        phase: Index of the current phase.
        save: ``save(path, metrics)`` writes a model checkpoint.
    """

    def __init__(self, run_dir: Path, phase: int, save: Callable[[Path, dict], None]) -> None:
        self.run_dir = Path(run_dir)
        self.phase = phase
        self.save = save
        self.best_path = self.run_dir / "best.json"
        self._epoch_start = time.perf_counter()

    def _load_best(self) -> dict[str, Any]:
        if self.best_path.is_file():
            return json.loads(self.best_path.read_text())
        return {"auroc": {"value": -math.inf}, "loss": {"value": math.inf}}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = dict(getattr(pl_module, "last_val", {}))
        if not metrics:
            return
        train_loss = trainer.callback_metrics.get("train_loss_epoch")
        row = {
            "phase": self.phase,
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "train_loss": float(train_loss) if train_loss is not None else float("nan"),
            "seconds": round(time.perf_counter() - self._epoch_start, 3),
            **metrics,
        }
        self._append_history(row)
        best = self._load_best()
        tag = {"phase": self.phase, "epoch": trainer.current_epoch, "global_step": trainer.global_step}
        auroc = metrics.get("val_auroc", float("nan"))
        if not math.isnan(auroc) and auroc > best["auroc"]["value"]:
            self.save(self.run_dir / "best_auroc.pt", metrics)
            best["auroc"] = {"value": auroc, **tag}
        loss = metrics.get("val_loss", float("nan"))
        if not math.isnan(loss) and loss < best["loss"]["value"]:
            self.save(self.run_dir / "best_loss.pt", metrics)
            best["loss"] = {"value": loss, **tag}
        atomic_write_json(self.best_path, best)

    def _append_history(self, row: dict[str, Any]) -> None:
        path = self.run_dir / "history.csv"
        rows: list[dict[str, Any]] = []
        if path.is_file():
            with path.open(newline="") as fh:
                rows = [r for r in csv.DictReader(fh)
                        if not (int(r["phase"]) == row["phase"] and int(r["epoch"]) == row["epoch"])]
        rows.append({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
        fields: list[str] = []
        for r in rows:
            fields += [k for k in r if k not in fields]

        def write(tmp: Path) -> None:
            with tmp.open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=fields, restval="")
                writer.writeheader()
                writer.writerows(rows)

        atomic_write(path, write)


class EpochCheckpoint(L.Callback):
    """Write ``ckpt_dir/last.ckpt`` after every training epoch, atomically.

    Lightning's ``ModelCheckpoint(save_top_k=0, save_last=True)`` writes nothing (a
    "last" copy is only made next to a top-k save), so a run killed mid-phase had no
    checkpoint to resume from. This callback saves the full trainer state (weights,
    optimizer, scheduler, loop counters, callback states) after the epoch's validation,
    to a temporary file that rank 0 renames over ``last.ckpt``: a SIGKILL at any moment
    leaves either the previous epoch's checkpoint or this one, never a torn file.
    ``trainer.fit(..., ckpt_path=last)`` then continues at the next epoch.

    Add it after the callbacks that write the epoch's history, so a checkpoint never
    runs ahead of ``history.csv``.

    Args:
        ckpt_dir: Folder of the phase's checkpoints.
    """

    def __init__(self, ckpt_dir: Path) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.path = self.ckpt_dir / "last.ckpt"

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Epochs without validation still get their checkpoint.
        if not trainer.enable_validation or trainer.val_dataloaders is None:
            self._save(trainer)

    def _save(self, trainer: L.Trainer) -> None:
        tmp = self.ckpt_dir / f".last.ckpt.{os.getpid()}.tmp"
        if trainer.is_global_zero:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        # Collective under DDP: every rank calls it, the strategy writes on rank 0.
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        trainer.strategy.barrier("cxrlab_epoch_checkpoint")


def checkpoint_start_epoch(path: str | Path) -> int:
    """The epoch a run resumed from the epoch-end checkpoint ``path`` starts with."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    return int(state["epoch"]) + 1


def resume_checkpoint(ckpt_dir: Path, resume: bool, what: str) -> str | None:
    """``ckpt_dir/last.ckpt`` for ``trainer.fit(ckpt_path=...)`` when resuming and it exists.

    Logs ``"resuming <what> at epoch <e>"`` (e.g. ``what="phase 1"``), the epoch the fit
    restarts at. None (a fresh start of the phase) otherwise.
    """
    last = Path(ckpt_dir) / "last.ckpt"
    if not (resume and last.is_file()):
        return None
    log.info("resuming %s at epoch %d from %s", what, checkpoint_start_epoch(last), last)
    return str(last)


class SamplerState(L.Callback):
    """Saves a :class:`~cxrlab.data.samplers.PositiveShareSampler`'s generator in the checkpoint.

    Its generator is seeded once and advances every epoch; restoring its state from an
    epoch-end checkpoint gives the resumed run the order of the epochs an uninterrupted run
    would have drawn next (the epoch-seeded samplers need nothing: they use ``set_epoch``).
    """

    def __init__(self, sampler: PositiveShareSampler) -> None:
        self.sampler = sampler

    def state_dict(self) -> dict[str, Any]:
        generator = self.sampler.generator
        return {"generator": generator.get_state()} if generator is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "generator" in state_dict and self.sampler.generator is not None:
            self.sampler.generator.set_state(state_dict["generator"])
