"""Experiment recipes: frozen dataclasses loaded from YAML, with ``key=value`` overrides.

A recipe is one YAML file per experiment (see ``configs/``). Variations are values, not
subclasses: ``cxrlab train configs/chexpert.yaml model.arch=resnet50 data.size=480 seed=3``.

Example:
    >>> cfg = load_config("configs/demo.yaml", ["train.phases.0.epochs=2"])
    >>> cfg.model.arch
    'resnet18'
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from cxrlab.config.base import (
    Recipe,
    apply_overrides,
    build,
    read_recipe,
    resolve_options,
)
from cxrlab.data.datasets import path_options
from cxrlab.utils import atomic_write_text

Policy = Literal["ones", "zeros", "ignore", "multiclass"]
Normalization = Literal["imagenet", "xrv", "unit"]
OnError = Literal["raise", "skip"]
NormalizeOn = Literal["auto", "loader", "device"]
Head = Literal["concat", "linear"]
LossName = Literal["bce", "focal", "aucm", "softf1", "ce",
                   # the U-Nets' (cxrlab.losses.segmentation), which share this train section
                   "dice", "jaccard", "iou", "tversky", "focal_tversky", "lovasz", "combo", "weighted_sum",
                   "bce_dice_focal"]
Optimizer = Literal["adam", "adamw", "radam", "sgd", "pesg"]
Schedule = Literal["onecycle", "constant", "cosine"]
Precision = Literal["32", "32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64", "64-true"]
Monitor = Literal["auroc", "loss", "dice_per_image", "dice"]


CHEXPERT_COMPETITION_TASKS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
)


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are prepared.

    Attributes:
        dataset: Adapter name (``chexpert``, ``mimic``, ``nih``, ``siim``, ``folder``,
            ``vindr``, ``generic``).
        options: Keyword arguments of the adapter's constructor (``csv``, ``root``, ...).
            Relative paths are resolved against the recipe's folder.
        valid_options: Adapter options for a separate validation set (CheXpert's
            ``valid.csv``). When empty, the validation set is split off by patient.
        tasks: Classes to train on (a subset of the adapter's pathologies); empty = all.
        policy: Uncertainty policies, ``"CLASS=ones|zeros|ignore|multiclass"`` strings.
        default_policy: Policy of classes not named in ``policy``.
        frontal_only: Keep frontal views only.
        split: Fractions of patients for train/valid/test when split off by patient.
        split_seed: Seed of the patient split (fixed across runs so runs are paired).
        size: Square input size in pixels.
        channels: 1 or 3 input channels.
        normalization: ``imagenet``, ``xrv`` or ``unit``.
        clip_percentiles: Percentile clipping before min-max scaling; null to disable.
        clahe: Apply CLAHE after scaling.
        cache: ``auto`` (build/reuse a resolution cache under ``output.root/cache``),
            ``none`` (decode every item), or a cache folder.
        augment: Light geometric/photometric augmentation of training images.
        batch_size: Effective batch size (images) per optimizer step.
        micro_batch: Images per forward pass; smaller than ``batch_size`` means gradient
            accumulation. Null = ``batch_size``.
        num_workers: DataLoader worker processes.
        on_error: ``raise`` or ``skip`` for unreadable images and bad label rows.
        normalize_on: Where cached training images are normalized. ``loader``: in the
            DataLoader workers (float32 batches cross to the trainer); ``device``: the
            workers ship uint8 batches (1/12 of the bytes at 3 channels) and the trainer
            normalizes them after the host-to-device copy, with the same table (the
            same values bit for bit); ``auto``: ``device`` when training on a GPU,
            ``loader`` on CPU (where the workers' cores do the work in parallel).
    """

    dataset: str = "chexpert"
    options: Mapping[str, Any] = field(default_factory=dict)
    valid_options: Mapping[str, Any] = field(default_factory=dict)
    tasks: tuple[str, ...] = CHEXPERT_COMPETITION_TASKS
    policy: tuple[str, ...] = ()
    default_policy: Policy = "ignore"
    frontal_only: bool = False
    split: Mapping[str, float] = field(
        default_factory=lambda: {"train": 0.8, "valid": 0.1, "test": 0.1}
    )
    split_seed: int = 0
    size: int = 320
    channels: int = 3
    normalization: Normalization = "imagenet"
    clip_percentiles: tuple[float, float] | None = (0.5, 99.5)
    clahe: bool = False
    cache: str = "auto"
    augment: bool = True
    batch_size: int = 40
    micro_batch: int | None = None
    num_workers: int = 2
    on_error: OnError = "raise"
    normalize_on: NormalizeOn = "auto"


@dataclass(frozen=True)
class ModelConfig:
    """Classifier architecture.

    Attributes:
        arch: Any timm model name (``densenet121``, ``efficientnet_b3``, ...).
        head: ``concat`` (seed 001's fastai-style head) or ``linear``.
        dropout: Dropout of the head (seed 001: 0.6).
        pretrained: Null (random init), ``imagenet`` (download when online) or a path
            to a local weights file.
    """

    arch: str = "densenet121"
    head: Head = "concat"
    dropout: float = 0.6
    pretrained: str | None = "imagenet"


@dataclass(frozen=True)
class PhaseConfig:
    """One training phase; unset fields fall back to :class:`TrainConfig`'s.

    Attributes:
        epochs: Epochs in this phase.
        freeze_body: Train the head only.
        lr: Maximum learning rate of every parameter group (used when the body is
            frozen or when ``lr_body``/``lr_head`` are unset).
        lr_body: Maximum learning rate of the body (discriminative learning rates).
        lr_head: Maximum learning rate of the head.
        loss: Loss name (``bce``, ``focal``, ``aucm``, ``softf1``); null = train.loss.
        loss_options: Keyword arguments of this phase's loss; null = train.loss_options.
        optimizer: ``adam``, ``adamw``, ``radam``, ``sgd`` or ``pesg``; null = train's.
        schedule: ``onecycle``, ``constant`` or ``cosine``; null = train's.
        reset_head: Re-initialise the last layer at the start of the phase (the
            LibAUC recipe before AUC-M fine-tuning).
        decay_epochs: Epochs (0-based, within the phase) at whose start the learning
            rate is divided by 10; with PESG this is LibAUC's ``update_regularizer``,
            which also resets the epoch-level reference point.
    """

    epochs: int = 1
    freeze_body: bool = False
    lr: float | None = None
    lr_body: float | None = None
    lr_head: float | None = None
    loss: LossName | None = None
    loss_options: Mapping[str, Any] | None = None
    optimizer: Optimizer | None = None
    schedule: Schedule | None = None
    reset_head: bool = False
    decay_epochs: tuple[int, ...] = ()


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by every phase.

    Attributes:
        phases: The phases in order (seed 001: one frozen epoch at 5e-3, then five
            epochs with body 2.5e-5 / head 2.5e-3).
        loss: Default loss name.
        loss_options: Keyword arguments of the loss (``pos_weight``, ``gamma``,
            ``margin``, ``imratio``, ...).
        optimizer: Default optimizer.
        lr: Default maximum learning rate.
        betas: Adam betas (seed 001: 0.9, 0.99).
        momentum: SGD/PESG momentum.
        weight_decay: Weight decay (seed 001: 0.1 with AdamW-style decoupling in fastai).
        epoch_decay: PESG's epoch-level regularizer strength (LibAUC).
        schedule: Default LR schedule; ``onecycle`` cycles momentum inversely.
        pct_start: Warm-up share of the one-cycle schedule.
        precision: Lightning precision: ``32``, ``bf16-mixed``, ``16-mixed``.
        channels_last: Use channels-last memory format (GPU).
        accelerator: Lightning accelerator (``auto``, ``cpu``, ``gpu``).
        devices: Devices per node (``auto``, an int, or a list).
        strategy: Lightning strategy (``auto``, ``ddp``, ...).
        shuffle: Shuffle training batches.
        deterministic: Deterministic algorithms (``torch.use_deterministic_algorithms``).
        limit_train_batches: Cap on batches per epoch (smoke tests); null = all.
        monitor: Metric that picks the best checkpoint: ``auroc`` or ``loss``.
    """

    phases: tuple[PhaseConfig, ...] = (
        PhaseConfig(epochs=1, freeze_body=True, lr=5e-3),
        PhaseConfig(epochs=5, lr_body=2.5e-5, lr_head=2.5e-3),
    )
    loss: LossName = "bce"
    loss_options: Mapping[str, Any] = field(default_factory=dict)
    optimizer: Optimizer = "adam"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.99)
    momentum: float = 0.9
    weight_decay: float = 0.1
    epoch_decay: float = 2e-3
    schedule: Schedule = "onecycle"
    pct_start: float = 0.25
    precision: Precision = "32"
    channels_last: bool = False
    accelerator: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"
    shuffle: bool = True
    deterministic: bool = True
    limit_train_batches: int | None = None
    monitor: Monitor = "auroc"


@dataclass(frozen=True)
class OutputConfig:
    """Where runs go.

    Attributes:
        root: Run root; each run gets ``root/<name>``.
        mlflow: Log to MLflow (``MLFLOW_TRACKING_URI`` or ``sqlite:///<root>/mlflow.db``).
        experiment: MLflow experiment name.
    """

    root: str = "runs"
    mlflow: bool = True
    experiment: str = "cxrlab"


@dataclass(frozen=True)
class ExperimentConfig(Recipe):
    """A whole recipe. ``name`` names the run directory (``output.root/name``)."""

    name: str = "experiment"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)



# ----------------------------------------------------------------------------- building


def _phases_to_dicts(raw: dict[str, Any]) -> None:
    """Make the default phases explicit so overrides like ``train.phases.1.epochs`` work."""
    train = raw.setdefault("train", {})
    if "phases" not in train:
        train["phases"] = [dataclasses.asdict(p) for p in TrainConfig().phases]


def config_from_dict(raw: Mapping[str, Any], overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Build an :class:`ExperimentConfig` from a nested mapping plus overrides."""
    data = json.loads(json.dumps(raw or {}))
    _phases_to_dicts(data)
    apply_overrides(data, overrides)
    return build(ExperimentConfig, data, "")


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read a YAML recipe, resolve relative data paths against its folder, apply overrides.

    Raises:
        MissingFileError: The recipe does not exist.
        ConfigError: Unknown keys, wrong types, or bad YAML.
    """
    cfg = read_recipe(path, lambda raw: config_from_dict(raw, overrides))
    return resolve_paths(cfg, Path(path).parent)




def resolve_paths(cfg: ExperimentConfig, base: Path) -> ExperimentConfig:
    """Resolve the adapter options' relative paths (cwd first, then the recipe's folder)."""
    data = dataclasses.replace(
        cfg.data,
        options=resolve_options(cfg.data.options, base, path_options(cfg.data.dataset)),
        valid_options=resolve_options(cfg.data.valid_options, base, path_options(cfg.data.dataset)),
    )
    return dataclasses.replace(cfg, data=data)


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    """Write the resolved recipe as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def phase_value(cfg: TrainConfig, phase: PhaseConfig, name: str) -> Any:
    """A phase's setting, falling back to the train-level default."""
    value = getattr(phase, name, None)
    return getattr(cfg, name) if value is None else value
