"""Classification pipeline: train a recipe, evaluate a run, predict images, compare runs.

A run directory holds everything a run produced::

    RUN_DIR/config.yaml        resolved recipe
    RUN_DIR/split.json         patients and item counts of every split
    RUN_DIR/status.json        running | finished | failed, with timestamps
    RUN_DIR/history.csv        one row per epoch (loss, per-task validation AUROC)
    RUN_DIR/best.json          best epoch by AUROC and by loss
    RUN_DIR/best_auroc.pt      model checkpoint with its metadata (labels, size, ...)
    RUN_DIR/best_loss.pt
    RUN_DIR/checkpoints/       per phase: last.ckpt (every epoch, atomic; resume) and final_weights.pt
    RUN_DIR/metrics.json       per-split, per-task AUROC with DeLong CI and thresholds
    RUN_DIR/predictions_<split>.csv   per-study labels and probabilities
    RUN_DIR/curves_<split>/    ROC, PR and reliability figures + JSON
    RUN_DIR/train.log
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from cxrlab.config import ExperimentConfig, load_config, phase_value, save_config
from cxrlab.engine.callbacks import (
    BestCheckpoints,
    EpochCheckpoint,
    EpochSeed,
    resume_checkpoint,
)
from cxrlab.engine.distributed import rank_zero_first
from cxrlab.engine.module import ClassifierModule
from cxrlab.engine.optim import OptimSpec
from cxrlab.losses import create_loss
from cxrlab.models import create_classifier
from cxrlab.models.weights import save_model_checkpoint
from cxrlab.runs.rundir import RunStatus, claim_run_directory, process_rank, run_status
from cxrlab.tasks.classification.data import (
    PreparedData,
    accumulation,
    make_loader,
    normalize_on_device,
    prepare_data,
)
from cxrlab.tasks.classification.evaluate import evaluate_run
from cxrlab.tasks.classification.preflight import check_recipe
from cxrlab.utils import atomic_torch_save, atomic_write_json

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- helpers


def _file_logger(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("cxrlab").addHandler(handler)
    logging.getLogger("lightning").addHandler(handler)
    return handler


def _model_meta(cfg: ExperimentConfig, prepared: PreparedData) -> dict[str, Any]:
    return {
        "arch": cfg.model.arch,
        "num_classes": len(prepared.task_names),
        "in_chans": prepared.channels,
        "head": cfg.model.head,
        "dropout": cfg.model.dropout,
        "labels": prepared.task_names,
        "input_size": prepared.preprocess.size,
        "preprocessing": prepared.preprocess.to_dict(),
        "normalization": prepared.normalization,
        "thresholds": {name: 0.5 for name in prepared.task_names},
        "run_name": cfg.name,
    }


def _phase_spec(cfg: ExperimentConfig, k: int) -> OptimSpec:
    train = cfg.train
    phase = train.phases[k]
    lr = phase_value(train, phase, "lr")
    return OptimSpec(
        optimizer=phase_value(train, phase, "optimizer"),
        lr_body=phase.lr_body if phase.lr_body is not None else lr,
        lr_head=phase.lr_head if phase.lr_head is not None else lr,
        freeze_body=phase.freeze_body,
        betas=tuple(train.betas),
        momentum=train.momentum,
        weight_decay=train.weight_decay,
        epoch_decay=train.epoch_decay,
        schedule=phase_value(train, phase, "schedule"),
        pct_start=train.pct_start,
        decay_epochs=tuple(phase.decay_epochs),
    )


def _make_loss(cfg: ExperimentConfig, k: int, prepared: PreparedData) -> torch.nn.Module:

    name = phase_value(cfg.train, cfg.train.phases[k], "loss")
    options = dict(phase_value(cfg.train, cfg.train.phases[k], "loss_options"))
    if name == "aucm":
        options.setdefault("num_classes", len(prepared.task_names))
        if options.get("imratio") is None:
            from cxrlab.losses.auc import estimate_imratio

            labels = prepared.task_labels("train")[prepared.splits["train"].indices]
            options["imratio"] = estimate_imratio(labels)
    elif name in ("bce", "focal") and options.get("pos_weight") == "auto":
        labels = prepared.task_labels("train")[prepared.splits["train"].indices]
        pos = np.nansum(labels == 1, axis=0)
        neg = np.nansum(labels == 0, axis=0)
        options["pos_weight"] = torch.as_tensor(neg / np.maximum(pos, 1), dtype=torch.float32)
    return create_loss(name, **options)


def _trainer(cfg: ExperimentConfig, epochs: int, callbacks: list, ckpt_dir: Path, progress: bool) -> L.Trainer:
    train = cfg.train
    return L.Trainer(
        max_epochs=epochs,
        accelerator=train.accelerator,
        devices=train.devices,
        strategy=train.strategy,
        precision=train.precision,
        deterministic=train.deterministic,
        accumulate_grad_batches=accumulation(cfg),
        limit_train_batches=train.limit_train_batches or 1.0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,     # the loaders shard themselves (ShardedSampler)
        callbacks=[*callbacks, EpochCheckpoint(ckpt_dir)],
        logger=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        default_root_dir=str(ckpt_dir),
    )


# ------------------------------------------------------------------------------- train


def run_directory(cfg: ExperimentConfig) -> Path:
    return Path(cfg.output.root) / cfg.name


def train(cfg: ExperimentConfig, resume: bool = False, progress: bool = True,
          epoch_hook: Callable[[int, int], None] | None = None) -> Path:
    """Train a recipe; returns the run directory.

    Args:
        cfg: The resolved recipe.
        resume: Continue a killed run in the same directory (finished phases are
            skipped, the interrupted one restarts from its last epoch-end checkpoint).
        progress: Show Lightning's progress bar.
        epoch_hook: Called as ``hook(phase, epoch)`` at each epoch start (tests use it
            to interrupt a run).

    Raises:
        ConfigError: The run directory holds another run and ``resume`` is False, or the
            recipe check (paths and choices, before any work) failed.
    """
    if process_rank() > 0:
        # A DDP worker (Lightning re-ran the command for it): rank 0 has checked the recipe and
        # claimed the folder; the worker trains alongside it, and rank 0 alone writes the config,
        # split, status, checkpoints, evaluation and MLflow run.
        run_dir = claim_run_directory(run_directory(cfg), resume=resume)
        _train_and_evaluate(cfg, run_dir, None, resume, progress, epoch_hook)
        return run_dir
    check_recipe(cfg, resume=resume)
    fresh = not (resume and run_directory(cfg).is_dir())
    run_dir = claim_run_directory(run_directory(cfg), resume=resume, hint="pass --resume to continue it",
                                  kind="classification")
    if resume and (run_dir / "config.yaml").is_file():
        previous = load_config(run_dir / "config.yaml")
        if previous.to_dict() != cfg.to_dict():
            log.warning("resuming with a recipe that differs from %s/config.yaml", run_dir)
    save_config(cfg, run_dir / "config.yaml")
    handler = _file_logger(run_dir)
    try:
        with run_status(run_dir) as status:
            _train_and_evaluate(cfg, run_dir, status, resume, progress, epoch_hook)
    except BaseException:
        # A start that failed while preparing the data (before split.json) must not
        # block the same command from running again: the new run folder is removed.
        if fresh and not (run_dir / "split.json").exists():
            handler.close()
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        logging.getLogger("cxrlab").removeHandler(handler)
        logging.getLogger("lightning").removeHandler(handler)
        handler.close()
    return run_dir


def _train_and_evaluate(cfg: ExperimentConfig, run_dir: Path, status: RunStatus | None, resume: bool, progress: bool,
                        epoch_hook: Callable[[int, int], None] | None) -> None:

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    with rank_zero_first():
        # Inside a DDP run that already started its process group (the pneumothorax gate):
        # rank 0 builds the cache while the workers wait, then they open it.
        prepared = prepare_data(cfg)
    if status is not None:
        _write_split(run_dir, prepared)
    model = create_classifier(cfg.model.arch, num_classes=len(prepared.task_names),
                              in_chans=prepared.channels, head=cfg.model.head,
                              pretrained=cfg.model.pretrained, dropout=cfg.model.dropout)
    meta = _model_meta(cfg, prepared)

    def save(path: Path, metrics: dict) -> None:
        save_model_checkpoint(path, model, {**meta, "val_metrics": metrics})

    valid = prepared.splits["valid"]
    for k, phase in enumerate(cfg.train.phases):
        _train_phase(cfg, k, model, prepared, valid, run_dir, save, resume, progress, epoch_hook)
    if status is None:  # DDP worker: rank 0 evaluates
        return
    status.set("evaluating")
    metrics = evaluate_run(run_dir, prepared=prepared, cfg=cfg)
    status.finished()
    if cfg.output.mlflow:
        from cxrlab.engine.tracking import log_run

        log_run(run_dir, cfg, metrics)


def _train_phase(cfg, k, model, prepared, valid, run_dir, save, resume, progress, epoch_hook) -> None:
    phase = cfg.train.phases[k]
    ckpt_dir = run_dir / "checkpoints" / f"phase{k}"
    done = ckpt_dir / "final_weights.pt"
    if done.is_file():
        model.load_state_dict(torch.load(done, map_location="cpu", weights_only=True))
        log.info("phase %d already finished; weights loaded", k)
        return
    if phase.reset_head:
        # LibAUC's recipe: re-initialise the classifier before AUC-M fine-tuning.
        last = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.reset_parameters()
    model.freeze_body(phase.freeze_body)
    on_device = normalize_on_device(cfg)
    module = ClassifierModule(
        model, _make_loss(cfg, k, prepared), prepared.task_names, prepared.label_columns,
        item_study_ids=valid.study_ids, item_labels=prepared.task_labels("valid"),
        optim=_phase_spec(cfg, k), channels_last=cfg.train.channels_last,
        input_norm=(prepared.channels, prepared.normalization) if on_device else None,
    )
    callbacks: list = [EpochSeed(cfg.seed, k), BestCheckpoints(run_dir, k, save)]
    if epoch_hook is not None:
        callbacks.append(_Hook(k, epoch_hook))
    trainer = _trainer(cfg, phase.epochs, callbacks, ckpt_dir, progress)
    ckpt_path = resume_checkpoint(ckpt_dir, resume, f"phase {k}")
    train_loader = make_loader(prepared, "train", cfg, train=True, shuffle_seed=cfg.seed * 31 + k, shard=True,
                               normalize=not on_device)
    valid_loader = make_loader(prepared, "valid", cfg, train=False, shard=True, normalize=not on_device)
    trainer.fit(module, train_loader, valid_loader, ckpt_path=ckpt_path)
    if trainer.interrupted:
        raise KeyboardInterrupt("training interrupted")

    if trainer.is_global_zero:
        atomic_torch_save(model.state_dict(), done)
    model.freeze_body(False)


class _Hook(L.Callback):
    def __init__(self, phase: int, hook: Callable[[int, int], None]) -> None:
        self.phase = phase
        self.hook = hook

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.hook(self.phase, trainer.current_epoch)


def _write_split(run_dir: Path, prepared: PreparedData) -> None:
    summary = {}
    for name, part in prepared.splits.items():
        table = part.dataset.table.iloc[part.indices]
        summary[name] = {
            "n_images": int(len(part.indices)),
            "n_studies": int(table["study_id"].nunique()),
            "n_patients": int(table["patient_id"].nunique()),
            "patients": sorted(table["patient_id"].astype(str).unique().tolist()),
        }
    atomic_write_json(run_dir / "split.json", summary)


# ---------------------------------------------------------------------------- evaluate


