"""Training the BraTS 3D U-Net through Lightning.

One run folder::

    RUN_DIR/config.yaml  split.json  status.json
    RUN_DIR/history.csv  best.json  best.pt            (best by mean validation Dice)
    RUN_DIR/checkpoints/last.ckpt                      (every epoch; ``--resume`` continues it)
    RUN_DIR/locator/history.csv best.json best.pt checkpoints/last.ckpt   (``model.stages: 2``)
    RUN_DIR/metrics.json  per_case.csv  table.md       (test cases, written by evaluate)
    RUN_DIR/predictions/<case>.nii.gz  overlays/<case>.png
    RUN_DIR/survival.json  survival_features.csv       (``brats survival``)

Validation segments whole (cropped) cases with sliding-window inference and scores the
mean Dice of WT, TC and ET; seeds per epoch come from :class:`~cxrlab.engine.callbacks.EpochSeed`,
the best checkpoint and history from :class:`~cxrlab.engine.segmentation.SegmentationCheckpoints`.
Every random stream of an epoch (MONAI's transforms, the loader's shuffle and worker seeds) is
re-seeded from (run seed, stage, epoch) when the epoch starts, so a run resumed from
``last.ckpt`` ends with the weights of an uninterrupted one (bit-identical on CPU, deterministic).

With ``model.stages: 2`` (Weninger et al.) the locator is trained first (two classes, whole
tumour, on the brain box downsampled by ``model.locator_scale``; validation Dice of WT), then
the segmenter on the reference tumour boxes plus ``model.margin``; prediction and evaluation
chain them (:class:`~cxrlab.inference.brats.BratsPredictor`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from cxrlab.config.brats import BratsConfig, save_brats_config
from cxrlab.data.datasets.brats import REGION_CLASSES, REGIONS, BratsDataset
from cxrlab.engine.callbacks import EpochCheckpoint, EpochSeed, epoch_seed
from cxrlab.engine.segmentation import SegmentationCheckpoints
from cxrlab.engine.tracking import mlflow_run
from cxrlab.inference.brats import LOCATOR_DIR, case_logits, create_network
from cxrlab.runs.rundir import claim_run_directory, run_status
from cxrlab.tasks.brats.data import (
    N_CLASSES,
    cached_dataset,
    ensure_phantoms,
    open_dataset,
    split_cases,
    train_transforms,
)
from cxrlab.tasks.brats.evaluate import evaluate_run
from cxrlab.utils import atomic_torch_save, atomic_write_json

log = logging.getLogger(__name__)


def region_dice(pred: torch.Tensor, truth: torch.Tensor, regions: tuple[str, ...] = REGIONS) -> torch.Tensor:
    """Dice of ``regions`` for each item of ``(B, x, y, z)`` class maps, ``(B, len(regions))``; both empty -> 1."""
    scores = []
    for name in regions:
        classes = torch.tensor(REGION_CLASSES[name], device=pred.device)
        p = torch.isin(pred, classes).flatten(1)
        t = torch.isin(truth, classes).flatten(1)
        inter = (p & t).sum(1).float()
        total = (p.sum(1) + t.sum(1)).float()
        scores.append(torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total)))
    return torch.stack(scores, dim=1)


class BratsSegmentationModule(L.LightningModule):
    """Trains the 3D U-Net with Adam on MONAI's Dice + cross-entropy (softmax over the classes).

    Args:
        network: The 3D U-Net.
        cfg: The recipe (train and inference sections, patch size).
        regions: Regions whose mean validation Dice is ``val_dice`` (the locator: ``("WT",)``).
    """

    def __init__(self, network: nn.Module, cfg: BratsConfig, regions: tuple[str, ...] = REGIONS) -> None:
        super().__init__()
        from monai.losses import DiceCELoss

        self.network = network
        self.cfg = cfg
        self.regions = regions
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=cfg.train.lambda_dice,
                                  lambda_ce=cfg.train.lambda_ce)
        self._val_dice: list[torch.Tensor] = []
        self._val_loss: list[torch.Tensor] = []
        self.last_val: dict[str, float] = {}

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.network(image)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        image, label = batch["image"], batch["label"]
        loss = self.loss_fn(self(image).float(), label.long())
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=image.shape[0],
                 sync_dist=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_dice, self._val_loss = [], []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        image, label = batch["image"], batch["label"]
        logits = case_logits(self.network, image, self.cfg).float()
        self._val_loss.append(self.loss_fn(logits, label.long()).detach().reshape(1))
        self._val_dice.append(region_dice(logits.argmax(1), label[:, 0].long(), self.regions).detach())

    def on_validation_epoch_end(self) -> None:
        if not self._val_dice:
            return
        dice, loss = torch.cat(self._val_dice), torch.cat(self._val_loss)
        if self.trainer.world_size > 1:
            dice = self.all_gather(dice).reshape(-1, len(self.regions))
            loss = self.all_gather(loss).reshape(-1)
        per_region = dice.mean(0).cpu().numpy()
        metrics = {"val_loss": float(loss.mean()), "val_dice": float(per_region.mean())}
        metrics.update({f"val_dice_{name}": float(v) for name, v in zip(self.regions, per_region)})
        self.last_val = metrics
        for key, value in metrics.items():
            if not math.isnan(value):
                self.log(key, value, prog_bar=key == "val_dice", sync_dist=False)

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.network.parameters(), lr=self.cfg.train.lr, weight_decay=self.cfg.train.weight_decay)


class ReseedEpoch(L.Callback):
    """Seed MONAI's random transforms and the loader's generator at each epoch start (resume-safe).

    The generator draws the shuffle order and the workers' base seeds (MONAI's loader seeds each
    worker's transforms from it), so an epoch's patches depend only on (seed, stage, epoch).
    """

    def __init__(self, transform: Any, generator: torch.Generator, seed: int, stage: int) -> None:
        self.transform = transform
        self.generator = generator
        self.seed, self.stage = seed, stage

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:

        value = epoch_seed(self.seed, self.stage, trainer.current_epoch) + trainer.global_rank
        self.transform.set_random_state(seed=value)
        self.generator.manual_seed(value)


def save_checkpoint(path: Path, network: nn.Module, cfg: BratsConfig, metrics: dict[str, Any],
                    classes: tuple[str, ...] = ("background", "NCR", "ED", "ET")) -> None:
    """``best.pt``: the network's weights with what a predictor needs (model section, patch, classes)."""
    state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    atomic_torch_save({"state_dict": state, "model": cfg.to_dict()["model"], "patch": list(cfg.data.patch),
                       "classes": list(classes), "modalities": ["t1", "t1ce", "t2", "flair"],
                       "preprocessing": "brain bounding-box crop, per-channel z-score over non-zero voxels",
                       "val_metrics": metrics}, path)


def fit_stage(cfg: BratsConfig, stage_dir: Path, dataset: BratsDataset, split: dict[str, list[str]],
              stage: str = "full", resume: bool = False, progress: bool = False) -> Path:
    """Train one network of the recipe into ``stage_dir`` (``best.pt``, ``history.csv``, ``checkpoints/``).

    Args:
        cfg: The recipe.
        stage_dir: The run folder (``full`` and ``segmenter``) or its ``locator/`` sub-folder.
        dataset: The opened BraTS folder.
        split: The case split.
        stage: ``full``, ``locator`` or ``segmenter`` (:data:`cxrlab.tasks.brats.data.STAGES`).
        resume: Continue from ``stage_dir/checkpoints/last.ckpt`` when it exists (a finished
            stage restores its last epoch and trains no further).
        progress: Lightning progress bars.

    Returns:
        ``stage_dir``.
    """
    from monai.data import DataLoader


    locator = stage == "locator"
    stage_index = 1 if locator else 0
    n_classes = 2 if locator else N_CLASSES
    regions = ("WT",) if locator else REGIONS
    random = train_transforms(cfg, n_classes)
    train_ds = cached_dataset(cfg, dataset, split["train"], random, stage=stage)
    valid_ds = cached_dataset(cfg, dataset, split["valid"], stage=stage)
    workers = int(cfg.data.num_workers)
    generator = torch.Generator().manual_seed(cfg.seed)
    # no persistent workers: each epoch's workers are seeded afresh from the re-seeded generator
    train_loader = DataLoader(train_ds, batch_size=max(1, cfg.data.batch_size // cfg.data.samples_per_case),
                              shuffle=True, num_workers=workers, generator=generator,
                              pin_memory=torch.cuda.is_available())
    valid_loader = DataLoader(valid_ds, batch_size=1, num_workers=0)
    network = create_network(cfg.model, n_classes)
    module = BratsSegmentationModule(network, cfg, regions)
    classes = ("background", "tumour") if locator else ("background", "NCR", "ED", "ET")
    checkpoint_dir = stage_dir / "checkpoints"
    last = checkpoint_dir / "last.ckpt"
    trainer = L.Trainer(
        max_epochs=cfg.train.epochs, accelerator=cfg.train.accelerator, devices=cfg.train.devices,
        strategy=cfg.train.strategy, precision=cfg.train.precision, deterministic=cfg.train.deterministic,
        limit_train_batches=cfg.train.limit_train_batches or 1.0, check_val_every_n_epoch=cfg.train.val_every,
        num_sanity_val_steps=0, logger=False, enable_progress_bar=progress, enable_model_summary=False,
        default_root_dir=str(stage_dir),
        callbacks=[EpochSeed(cfg.seed, stage_index), ReseedEpoch(random, generator, cfg.seed, stage_index),
                   SegmentationCheckpoints(stage_dir, 0, lambda p, m: save_checkpoint(p, network, cfg, m, classes),
                                           "dice"),
                   EpochCheckpoint(checkpoint_dir)])
    ckpt = str(last) if resume and last.is_file() else None
    if ckpt:
        log.info("resuming the %s stage from %s", stage, ckpt)
    trainer.fit(module, train_loader, valid_loader, ckpt_path=ckpt)
    return stage_dir


def train(cfg: BratsConfig, resume: bool = False, overwrite: bool = False, progress: bool = False) -> Path:
    """Train (one or two stages), evaluate on the test cases, log to MLflow; returns the run folder.

    Args:
        cfg: The recipe (phantoms written first when it has a ``phantoms`` section).
        resume: Continue the run in ``output.root/name`` from its ``checkpoints/last.ckpt`` files.
        overwrite: Delete an existing run of that name first.
        progress: Lightning progress bars.

    Raises:
        ConfigError: The run folder holds a run (and neither flag is set); bad split.
    """
    cfg = ensure_phantoms(cfg)
    run_dir = claim_run_directory(Path(cfg.output.root) / cfg.name, resume=resume, overwrite=overwrite,
                                  hint="pass --resume to continue it or --overwrite to replace it", kind="brats")
    save_brats_config(cfg, run_dir / "config.yaml")
    with run_status(run_dir) as status:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        dataset = open_dataset(cfg)
        ids = dataset.case_ids[: cfg.data.max_cases] if cfg.data.max_cases else dataset.case_ids
        split = split_cases(ids, dict(cfg.data.split), cfg.data.split_seed)
        atomic_write_json(run_dir / "split.json", {**split, "layout": dataset.layout, "labels": dataset.labels,
                                                   "root": str(dataset.root), "skipped": dataset.skips.count})
        if not split["valid"]:
            from cxrlab.errors import ConfigError

            raise ConfigError("data.split", "training needs at least one validation case (data.split.valid > 0)")
        if cfg.model.stages == 2:
            (run_dir / LOCATOR_DIR).mkdir(exist_ok=True)
            fit_stage(cfg, run_dir / LOCATOR_DIR, dataset, split, "locator", resume, progress)
            fit_stage(cfg, run_dir, dataset, split, "segmenter", resume, progress)
        else:
            fit_stage(cfg, run_dir, dataset, split, "full", resume, progress)
        status.set("evaluating")
        metrics = evaluate_run(run_dir, cfg=cfg, dataset=dataset)
        status.finished()
    if cfg.output.mlflow:
        _log_mlflow(run_dir, cfg, metrics)
    return run_dir


def _log_mlflow(run_dir: Path, cfg: BratsConfig, metrics: dict[str, Any]) -> str:
    """Log the main settings, the test Dice/HD95 per region, and the run's tables."""
    import mlflow


    tags = {"cxrlab.run_dir": str(run_dir.resolve()), "cxrlab.kind": "brats"}
    with mlflow_run(cfg.output.root, cfg.output.experiment, cfg.name, tags) as active:
        mlflow.log_params({"model.arch": cfg.model.arch, "model.channels": str(list(cfg.model.channels)),
                           "model.stages": cfg.model.stages,
                           "data.patch": str(list(cfg.data.patch)), "train.epochs": cfg.train.epochs,
                           "train.lr": cfg.train.lr, "train.precision": cfg.train.precision})
        for region, scores in (metrics.get("mean") or {}).items():
            for key, value in scores.items():
                if value is not None and np.isfinite(value):
                    mlflow.log_metric(f"test_{key}_{region}", float(value))
        for name in ("config.yaml", "metrics.json", "history.csv", "split.json", "table.md", "per_case.csv"):
            if (run_dir / name).is_file():
                mlflow.log_artifact(str(run_dir / name))
        return active.info.run_id
