"""Pneumothorax segmentation (seed 002): baseline U-Net vs the classifier-gated "One Case" cascade.

One recipe trains up to three models on the same patient split:

* ``baseline``: a U-Net trained on every image (Table 4.2);
* ``one_case``: the same U-Net trained on positive images only (Table 4.4);
* ``gate``: a classifier (Table 4.3: ResNeXt50, soft-F1 loss, RAdam) trained with the
  classification pipeline (:func:`cxrlab.tasks.classification.train.train`);

and the cascade (Algorithm 1) empties the One Case mask of every image the gate calls
negative. The U-Nets see the poster's (seed 004) rescale-and-crop when ``unet.crop`` is
set (``data.size: 480``, ``unet.crop: 448``) and the joint augmentation of Table 4.1.
Post-processing is tuned on the validation patients and scored on the test patients
(:mod:`cxrlab.inference.postprocess`, rows of Table 5.1).

A run directory::

    RUN_DIR/config.yaml  split.json  status.json
    RUN_DIR/baseline/    history.csv best.json best.pt      (U-Net on all images)
    RUN_DIR/one_case/    history.csv best.json best.pt      (U-Net on positives)
    RUN_DIR/gate/        a classification run (best_auroc.pt, best_loss.pt, metrics.json, ...)
    RUN_DIR/postprocess.json   tuned post-processing per model and row
    RUN_DIR/metrics.json       test scores per model and row, gate AUROC
    RUN_DIR/results.csv  table.md
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml

from cxrlab.config import config_from_dict
from cxrlab.config.pneumothorax import PneumothoraxConfig
from cxrlab.data.samplers import PositiveShareSampler
from cxrlab.engine.callbacks import (
    EpochCheckpoint,
    EpochSeed,
    SamplerState,
    resume_checkpoint,
)
from cxrlab.engine.segmentation import SegmentationCheckpoints, SegmentationModule
from cxrlab.engine.tracking import mlflow_run
from cxrlab.errors import ConfigError
from cxrlab.inference.pneumothorax import gate_checkpoint
from cxrlab.losses.segmentation import create_segmentation_loss
from cxrlab.models.segmentation import create_unet, save_segmentation_checkpoint
from cxrlab.runs.rundir import claim_run_directory, process_rank, run_status
from cxrlab.tasks.classification.data import accumulation
from cxrlab.tasks.classification.train import _phase_spec
from cxrlab.tasks.classification.train import train as train_classifier
from cxrlab.tasks.pneumothorax.data import (
    SegData,
    _check_sizes,
    _loader,
    _valid_fraction,
    ensure_phantoms,
    joint_augment,
    open_data,
)
from cxrlab.tasks.pneumothorax.evaluate import evaluate_run
from cxrlab.utils import atomic_torch_save, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ recipe


# -------------------------------------------------------------------------------- data


# ------------------------------------------------------------------------------ training


def train_unet(cfg: PneumothoraxConfig, data: SegData, role: str, run_dir: Path, progress: bool = False,
               resume: bool = False) -> Path:
    """Train the ``baseline`` (all training images) or ``one_case`` (positives only) U-Net.

    The One Case U-Net also selects its checkpoint on positive validation images only.
    Phases follow ``train.phases`` (seed 002: 6 epochs encoder frozen, then 12). Every
    epoch ends with an atomic ``run_dir/checkpoints/phase<k>/last.ckpt`` and every phase
    with its ``final_weights.pt``; ``resume`` skips finished phases and restarts the
    interrupted one at the epoch after its last checkpoint. Under DDP (``train.strategy``)
    every rank runs this function; rank 0 alone writes files.

    Returns:
        The best checkpoint (``run_dir/best.pt``).
    """
    _check_sizes(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    train_idx, valid_idx = data.splits["train"], data.splits["valid"]
    pos_share, epoch_size = cfg.unet.pos_share, None
    if cfg.unet.one_case_epoch not in ("positives", "match"):
        raise ConfigError("unet.one_case_epoch", f"must be 'positives' or 'match', got {cfg.unet.one_case_epoch!r}")
    if role == "one_case":
        train_idx, valid_idx = train_idx[data.labels("train") == 1], valid_idx[data.labels("valid") == 1]
        if len(train_idx) == 0 or len(valid_idx) == 0:
            raise ConfigError("data.split", "the One Case U-Net needs positive training and validation images")
        pos_share = None
        if cfg.unet.one_case_epoch == "match":     # cycle the positives: baseline-sized epochs
            micro = cfg.data.micro_batch or cfg.data.batch_size
            pos_share, epoch_size = 1.0, -(-len(data.splits["train"]) // micro) * micro
    if process_rank() == 0:
        atomic_write_json(run_dir / "train_images.json", {
            "indices": [int(i) for i in train_idx], "labels": [float(v) for v in data.dataset.labels[train_idx, 0]],
            "valid_indices": [int(i) for i in valid_idx]})
    model = create_unet(cfg.unet.encoder, in_chans=cfg.data.channels, classes=cfg.unet.classes,
                        pretrained=cfg.unet.pretrained, decoder_channels=cfg.unet.decoder_channels)
    meta = {"role": role, "input_size": cfg.data.size, "preprocessing": data.preprocess.to_dict(),
            "normalization": cfg.data.normalization, "run_name": cfg.name}

    def save(path: Path, metrics: dict) -> None:
        save_segmentation_checkpoint(path, model, {**meta, "val_metrics": metrics})

    seed = cfg.seed * 7 + (0 if role == "baseline" else 1)
    for k, phase in enumerate(cfg.train.phases):
        ckpt_dir = run_dir / "checkpoints" / f"phase{k}"
        done = ckpt_dir / "final_weights.pt"
        if resume and done.is_file():
            model.load_state_dict(torch.load(done, map_location="cpu", weights_only=True))
            log.info("%s phase %d already finished; weights loaded", role, k)
            continue
        loss = create_segmentation_loss(phase.loss or cfg.train.loss, **dict(
            phase.loss_options if phase.loss_options is not None else cfg.train.loss_options))
        model.freeze_body(phase.freeze_body)
        module = SegmentationModule(model, loss, _phase_spec(cfg, k), channels_last=cfg.train.channels_last)
        augment = joint_augment(cfg.unet.crop, seed=seed * 101 + k,
                                augment=cfg.data.augment and cfg.unet.augment)
        train_loader = _loader(cfg, data, train_idx, True, seed * 31 + k, augment, pos_share, epoch_size, shard=True)
        callbacks: list = [EpochSeed(seed, k), SegmentationCheckpoints(run_dir, k, save, cfg.train.monitor)]
        if isinstance(train_loader.sampler.sampler, PositiveShareSampler):
            callbacks.append(SamplerState(train_loader.sampler.sampler))
        trainer = L.Trainer(
            max_epochs=phase.epochs, accelerator=cfg.train.accelerator, devices=cfg.train.devices,
            strategy=cfg.train.strategy, precision=cfg.train.precision, deterministic=cfg.train.deterministic,
            accumulate_grad_batches=accumulation(cfg),
            limit_train_batches=cfg.train.limit_train_batches or 1.0, num_sanity_val_steps=0,
            use_distributed_sampler=False,         # the loaders shard themselves (ShardedSampler)
            callbacks=[*callbacks, EpochCheckpoint(ckpt_dir)],
            logger=False, enable_checkpointing=False, enable_progress_bar=progress,
            enable_model_summary=False, default_root_dir=str(run_dir))
        ckpt_path = resume_checkpoint(ckpt_dir, resume, f"{role} phase {k}")
        trainer.fit(module, train_loader, _loader(cfg, data, valid_idx, False, 0, shard=True), ckpt_path=ckpt_path)
        if trainer.interrupted:
            raise KeyboardInterrupt("training interrupted")
        if trainer.is_global_zero:
            atomic_torch_save(model.state_dict(), done)
        model.freeze_body(False)
    return run_dir / "best.pt"


def _gate_csv(data: SegData, indices: np.ndarray, path: Path) -> Path:
    """The RLE rows of ``indices`` (dataset order) as the gate's training CSV."""
    table = data.dataset.table
    lines = ["ImageId,EncodedPixels"]
    for i in np.sort(indices):
        image_id = str(table["image_id"].iloc[int(i)])
        lines += [f"{image_id},{rle}" for rle in data.dataset.rles[image_id]]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def gate_config(cfg: PneumothoraxConfig, rle_csv: Path, root: Path) -> Any:
    """The gate's classification recipe: shared data section with ``gate.data`` over it."""
    data = {**dataclasses.asdict(cfg.data), **dict(cfg.gate.data)}
    source = dict(cfg.data.options)
    image_root = source.get("root") or str(Path(source["rle_csv"]).parent)
    data["options"] = {**source, "rle_csv": str(rle_csv), "root": image_root, "check_files": False}
    vf = _valid_fraction(cfg)
    data["split"] = {"train": 1.0 - vf, "valid": vf}
    data["tasks"] = ["Pneumothorax"]
    # One run, one hardware setting: the gate trains where (and with the strategy) the U-Nets do,
    # so a DDP run's worker processes train the gate alongside rank 0.
    train = {**dataclasses.asdict(cfg.gate.train), "accelerator": cfg.train.accelerator,
             "devices": cfg.train.devices, "strategy": cfg.train.strategy}
    return config_from_dict({
        "name": "gate", "seed": cfg.seed, "data": data,
        "model": dataclasses.asdict(cfg.gate.model), "train": train,
        "output": {"root": str(root), "mlflow": cfg.output.mlflow, "experiment": cfg.output.experiment}})


def train_gate(cfg: PneumothoraxConfig, data: SegData, run_dir: Path, progress: bool = False,
               resume: bool = False) -> Path:
    """Train the gate with the classification pipeline on the train + valid images.

    The classification pipeline splits those images by patient with the same seed and
    shares, so the gate validates on exactly the U-Nets' validation patients (checked).
    ``resume`` continues an interrupted gate run (its phases' checkpoints); on a DDP
    worker only the training runs (rank 0 writes and evaluates).

    Returns:
        The gate checkpoint the cascade uses (:func:`gate_checkpoint`).
    """
    rest = np.concatenate([data.splits["train"], data.splits["valid"]])
    csv = run_dir / "gate_data" / "train-rle.csv"
    if process_rank() == 0:
        _gate_csv(data, rest, csv)
    gate_dir = train_classifier(gate_config(cfg, csv, run_dir), resume=resume, progress=progress)
    if process_rank() > 0:
        return gate_dir
    split = json.loads((gate_dir / "split.json").read_text())
    mine = sorted(data.dataset.table["patient_id"].astype(str).iloc[data.splits["valid"]].unique())
    if split.get("valid", {}).get("patients") != mine:
        log.warning("the gate's validation patients differ from the U-Nets'; gate thresholds tuned on "
                    "validation may be optimistic")
    return gate_checkpoint(run_dir)


def _write_split(run_dir: Path, data: SegData) -> None:
    table = data.dataset.table
    summary = {}
    for name, idx in data.splits.items():
        part = table.iloc[idx]
        summary[name] = {"n_images": int(len(idx)), "n_positive": int(np.sum(data.dataset.labels[idx, 0] == 1)),
                         "indices": [int(i) for i in idx], "image_ids": part["image_id"].astype(str).tolist(),
                         "patients": sorted(part["patient_id"].astype(str).unique().tolist())}
    atomic_write_json(run_dir / "split.json", summary)


def train(cfg: PneumothoraxConfig, test_indices: np.ndarray | None = None, progress: bool = False,
          resume: bool = False) -> Path:
    """Train every model the recipe's ``models`` need, then evaluate; returns the run directory.

    Under DDP (``train.strategy=ddp``) Lightning re-runs the command for the other ranks;
    they train every network alongside rank 0, which alone claims the folder and writes
    the config, split, status, checkpoints, history, evaluation and MLflow run.

    Args:
        cfg: The recipe (phantoms are written first when it has a ``phantoms`` section).
        test_indices: A cross-validation fold to hold out (default: ``data.split['test']``).
        progress: Lightning progress bars.
        resume: Continue a killed run in the same folder: finished networks and phases are
            skipped, the interrupted phase restarts at the epoch after its last checkpoint.

    Raises:
        ConfigError: The run directory already holds a run and ``resume`` is False.
    """
    worker = process_rank() > 0
    if worker:
        log.info("DDP worker of rank %d: training every network alongside rank 0", process_rank())
    cfg = ensure_phantoms(cfg)
    run_dir = claim_run_directory(Path(cfg.output.root) / cfg.name, resume=resume, kind="segmentation",
                                  hint="pass --resume to continue it")
    if not worker:
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    with (contextlib.nullcontext() if worker else run_status(run_dir)) as status:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        data = open_data(cfg, test_indices)
        if not worker:
            _write_split(run_dir, data)
        if "baseline" in cfg.models:
            train_unet(cfg, data, "baseline", run_dir / "baseline", progress, resume)
        if "cascade" in cfg.models:
            train_unet(cfg, data, "one_case", run_dir / "one_case", progress, resume)
            train_gate(cfg, data, run_dir, progress, resume)
        if worker:
            return run_dir
        metrics = evaluate_run(run_dir, cfg=cfg, data=data)
        status.finished()
        if cfg.output.mlflow:
            _log_mlflow(run_dir, cfg, metrics)
    return run_dir


def _log_mlflow(run_dir: Path, cfg: PneumothoraxConfig, metrics: dict[str, Any]) -> str:
    """Log the recipe's main settings, the test scores per model and row, and the tables."""
    import mlflow


    tags = {"cxrlab.run_dir": str(run_dir.resolve()), "cxrlab.kind": "segmentation"}
    with mlflow_run(cfg.output.root, cfg.output.experiment, cfg.name, tags) as active:
        mlflow.log_params({"unet.encoder": cfg.unet.encoder, "data.size": cfg.data.size,
                           "train.loss": cfg.train.loss, "gate.arch": cfg.gate.model.arch,
                           "models": ",".join(cfg.models)})
        for model, rows in metrics.get("models", {}).items():
            for row, scores in rows.items():
                for key in ("dice_per_image", "dice_global", "iou_global"):
                    value = (scores.get("test") or {}).get(key)
                    if value is not None and value == value:
                        mlflow.log_metric(f"{model}.{row}.{key}", float(value))
        for name in ("config.yaml", "metrics.json", "postprocess.json", "results.csv", "table.md"):
            if (run_dir / name).is_file():
                mlflow.log_artifact(str(run_dir / name))
        return active.info.run_id
