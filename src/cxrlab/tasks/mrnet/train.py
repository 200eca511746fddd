"""Training MRNet: one Lightning module per task and plane, the 9-network grid, the logistic regressions.

:func:`train` claims the run folder, writes the split and the per-plane histogram
landmarks, trains every (task, plane) network through an executor (in this process, or
``train.processes`` worker processes so the planes of a task train side by side), predicts
every split with the run's predictor, fits one logistic regression per task on the
training exams' plane probabilities, evaluates on the held-out split and logs to MLflow.

A network saves Lightning's ``last.ckpt`` after every epoch; ``resume=True`` continues each
unfinished network from it and skips finished ones (``done.json``).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml

from cxrlab.config.mrnet import MRNetConfig, config_from_mapping
from cxrlab.engine.callbacks import BestCheckpoints, EpochSeed, EpochShuffleSampler
from cxrlab.engine.distributed import torch_threads
from cxrlab.engine.executors import create_executor
from cxrlab.engine.tracking import mlflow_run
from cxrlab.metrics.classification import auroc, youden_threshold
from cxrlab.models.mrnet import PlaneNet, create_plane_net, save_plane_checkpoint
from cxrlab.runs.rundir import claim_run_directory, run_status
from cxrlab.tasks.mrnet.data import (
    PlaneDataset,
    ensure_phantoms,
    fit_landmarks,
    one_exam,
    open_splits,
    write_split,
)
from cxrlab.tasks.mrnet.evaluate import evaluate_run, predict_splits
from cxrlab.utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

class MRNetModule(L.LightningModule):
    """One plane network: one exam per step, weighted BCE, Adam, LR reduced on a plateau of the tune loss.

    After each validation ``last_val`` holds ``val_loss`` and ``val_auroc`` on the tune exams
    (read by :class:`~cxrlab.engine.callbacks.BestCheckpoints`).
    """

    def __init__(self, net: PlaneNet, pos_weight: float, lr: float, weight_decay: float, patience: int,
                 factor: float) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("pos_weight", torch.tensor([float(pos_weight)]))
        self.lr, self.weight_decay, self.patience, self.factor = lr, weight_decay, patience, factor
        self._val: list[tuple[float, float, float]] = []
        self.last_val: dict[str, float] = {}

    def _loss(self, logit: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(logit.float(), y.float(),
                                                                    pos_weight=self.pos_weight)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self._loss(self.net(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True, batch_size=1)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logit = self.net(x)
        self._val.append((float(self._loss(logit, y)), float(torch.sigmoid(logit.float())), float(y)))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        losses, probs, labels = (np.array(v) for v in zip(*self._val))
        self._val = []
        self.last_val = {"val_loss": float(losses.mean()), "val_auroc": auroc(labels, probs)}
        self.log("val_loss", self.last_val["val_loss"], batch_size=1)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", patience=self.patience,
                                                               factor=self.factor)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss", "interval": "epoch"}}


def train_plane(cfg: MRNetConfig, run_dir: Path, task: str, plane: str, progress: bool = False) -> Path:
    """Train one plane network (see :func:`_train_plane`) with ``train.threads`` torch threads,
    restoring the caller's thread count afterwards."""
    with torch_threads(int(cfg.train.threads or 0)):
        return _train_plane(cfg, run_dir, task, plane, progress)


def _train_plane(cfg: MRNetConfig, run_dir: Path, task: str, plane: str, progress: bool = False) -> Path:
    """Train (or resume) the network of ``task`` and ``plane`` in ``run_dir/task/plane``.

    Returns:
        Its folder (``done.json`` written when finished).
    """
    from lightning.pytorch.callbacks import ModelCheckpoint


    folder = Path(run_dir) / task / plane
    if (folder / "done.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    seed = cfg.seed * 1009 + cfg.tasks.index(task) * 31 + cfg.planes.index(plane)
    L.seed_everything(seed, workers=True, verbose=False)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    landmarks = json.loads((Path(run_dir) / "landmarks.json").read_text())[plane]
    splits = open_splits(cfg)
    d = cfg.data
    train_ds = PlaneDataset(splits.train, plane, task, landmarks, d.size, d.normalization, augment=d.augment)
    tune_ds = PlaneDataset(splits.tune, plane, task, landmarks, d.size, d.normalization)
    positives = float(train_ds.labels.sum())
    pos_weight = (len(train_ds) - positives) / positives if cfg.train.weighted_loss and positives > 0 else 1.0
    net = create_plane_net(cfg.model.arch, cfg.model.pretrained)
    module = MRNetModule(net, pos_weight, cfg.train.lr, cfg.train.weight_decay, cfg.train.patience,
                         cfg.train.factor)
    meta = {"task": task, "plane": plane, "size": d.size, "normalization": d.normalization,
            "landmarks": landmarks, "run_name": cfg.name, "pos_weight": pos_weight}

    def save(path: Path, metrics: dict) -> None:
        save_plane_checkpoint(path, net, {**meta, "val_metrics": metrics})

    workers = int(d.num_workers)
    loader = torch.utils.data.DataLoader(train_ds, batch_size=1, collate_fn=one_exam, num_workers=workers,
                                         sampler=EpochShuffleSampler(len(train_ds), seed, shuffle=True),
                                         persistent_workers=workers > 0)
    tune_loader = torch.utils.data.DataLoader(tune_ds, batch_size=1, collate_fn=one_exam, num_workers=workers,
                                              persistent_workers=workers > 0)
    limit = cfg.train.limit_train_exams
    trainer = L.Trainer(
        max_epochs=cfg.train.epochs, accelerator=cfg.train.accelerator, devices=cfg.train.devices,
        precision=cfg.train.precision, deterministic=cfg.train.deterministic,
        limit_train_batches=limit if limit else 1.0, num_sanity_val_steps=0,
        callbacks=[EpochSeed(seed, 0), BestCheckpoints(folder, 0, save),
                   ModelCheckpoint(dirpath=folder, save_last=True, save_top_k=0, every_n_epochs=1)],
        logger=False, enable_progress_bar=progress, enable_model_summary=False, default_root_dir=str(folder))
    last = folder / "last.ckpt"
    trainer.fit(module, loader, tune_loader, ckpt_path=str(last) if last.is_file() else None)
    atomic_write_json(folder / "done.json", {"epochs": trainer.current_epoch, "pos_weight": pos_weight})
    return folder


def train_plane_entry(payload: dict[str, Any]) -> str:
    """Executor entry point (module-level, picklable): ``payload`` = cfg dict, run_dir, task, plane."""
    cfg = config_from_mapping(payload["cfg"])
    return str(train_plane(cfg, Path(payload["run_dir"]), payload["task"], payload["plane"],
                           payload.get("progress", False)))


def fit_combiners(predictions: Any, cfg: MRNetConfig, tune: Any = None) -> dict[str, Any]:
    """One scikit-learn logistic regression per task over the planes' probabilities (training exams),
    and the operating thresholds (``cfg.operating_point``: fixed, or Youden's on the ``tune`` exams).

    Returns:
        ``{task: {"planes": [...], "coef": [...], "intercept": float, "threshold": float (combined),
        "thresholds": {model: float}, "threshold_from": str}}``.
    """
    from sklearn.linear_model import LogisticRegression

    out = {}
    for task in cfg.tasks:
        columns = [f"{task}_{plane}" for plane in cfg.planes]
        rows = predictions[~predictions[task].isna()]
        x = rows[columns].to_numpy(dtype=float)
        y = rows[task].to_numpy(dtype=float)
        if len(np.unique(y)) < 2:
            coef, intercept = [1.0 / len(cfg.planes)] * len(cfg.planes), 0.0
            log.warning("%s: training exams hold one class; the combination averages the planes' logits", task)
        else:
            model = LogisticRegression().fit(x, y)
            coef, intercept = model.coef_[0].tolist(), float(model.intercept_[0])
        thresholds = {model: float(cfg.threshold) for model in [*cfg.planes, "combined"]}
        source = "fixed"
        if cfg.operating_point == "youden" and tune is not None:
            known = tune[~tune[task].isna()]
            labels = known[task].to_numpy(dtype=float)
            if 0 < labels.sum() < len(labels):
                probs = {plane: known[f"{task}_{plane}"].to_numpy(dtype=float) for plane in cfg.planes}
                z = intercept + np.column_stack([probs[p] for p in cfg.planes]) @ np.asarray(coef)
                probs["combined"] = 1.0 / (1.0 + np.exp(-z))
                thresholds = {model: youden_threshold(labels, p) for model, p in probs.items()}
                source = f"youden on {len(labels)} tune exams"
            else:
                log.warning("%s: the tune exams hold one class; keeping the fixed threshold %s", task, cfg.threshold)
                source = "fixed (tune exams hold one class)"
        out[task] = {"planes": list(cfg.planes), "coef": coef, "intercept": intercept,
                     "threshold": thresholds["combined"], "thresholds": thresholds, "threshold_from": source,
                     "fitted_on": "train", "exams": int(len(rows))}
    return out


def train(cfg: MRNetConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = False) -> Path:
    """Train the run (see :func:`_train`) with ``train.threads`` torch threads, restoring the
    caller's thread count afterwards (a library call must not change the process's settings)."""
    with torch_threads(int(cfg.train.threads or 0)):
        return _train(cfg, resume=resume, overwrite=overwrite, progress=progress)


def _train(cfg: MRNetConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = False) -> Path:
    """Train the recipe's grid, combine, evaluate; returns the run folder.

    Raises:
        ConfigError: The run folder holds files and neither ``resume`` nor ``overwrite`` is set.
    """
    cfg = ensure_phantoms(cfg)
    run_dir = claim_run_directory(Path(cfg.output.root) / cfg.name, resume=resume, overwrite=overwrite,
                                  hint="pass --resume to continue it", kind="mrnet")
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    with run_status(run_dir) as status:
        splits = open_splits(cfg)
        write_split(run_dir, splits)
        if not (run_dir / "landmarks.json").is_file():
            atomic_write_json(run_dir / "landmarks.json", fit_landmarks(splits.train, cfg.planes))
        items = [(f"{task}/{plane}", {"cfg": cfg.to_dict(), "run_dir": str(run_dir), "task": task,
                                      "plane": plane, "progress": progress})
                 for task in cfg.tasks for plane in cfg.planes]
        processes = max(1, int(cfg.train.processes))
        executor = create_executor("inline" if processes == 1 else "local", processes if processes > 1 else None)
        failed = []
        with executor:
            for event in executor.run(train_plane_entry, items):
                if event.kind == "started":
                    status.set("running", network=event.key)
                    log.info("training %s", event.key)
                elif event.kind == "failed":
                    log.error("%s failed: %s", event.key, event.error)
                    failed.append(f"{event.key}: {event.error}")
        if failed:
            raise RuntimeError("networks failed: " + "; ".join(failed))
        status.set("evaluating")
        predictions = predict_splits(run_dir, splits)
        atomic_write_json(run_dir / "combine.json", fit_combiners(predictions["train"], cfg, predictions["tune"]))
        metrics = evaluate_run(run_dir, predictions=predictions["valid"])
        status.finished()
    if cfg.output.mlflow:
        _log_mlflow(run_dir, cfg, metrics)
    return run_dir


def _log_mlflow(run_dir: Path, cfg: MRNetConfig, metrics: dict[str, Any]) -> str:
    import mlflow


    tags = {"cxrlab.run_dir": str(run_dir.resolve()), "cxrlab.kind": "mrnet"}
    with mlflow_run(cfg.output.root, cfg.output.experiment, cfg.name, tags) as active:
        mlflow.log_params({"model.arch": cfg.model.arch, "data.size": cfg.data.size, "train.lr": cfg.train.lr,
                           "train.epochs": cfg.train.epochs, "tasks": ",".join(cfg.tasks),
                           "planes": ",".join(cfg.planes)})
        for task, models in metrics.get("tasks", {}).items():
            for model, scores in models.items():
                value = scores.get("auroc")
                if value is not None and not math.isnan(value):
                    mlflow.log_metric(f"valid_auroc.{task}.{model}", float(value))
        for name in ("config.yaml", "metrics.json", "combine.json", "table.md", "split.json", "landmarks.json"):
            if (run_dir / name).is_file():
                mlflow.log_artifact(str(run_dir / name))
        return active.info.run_id
