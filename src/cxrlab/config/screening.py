"""The normal-screening recipe (seed 003, SCXNN): data, networks, training, SVM, risk groups."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cxrlab.config import apply_overrides, read_recipe
from cxrlab.config.base import build, resolve_options
from cxrlab.data.datasets import path_options
from cxrlab.data.screening import DilationConfig, dilation_from_dict
from cxrlab.data.transforms import PreprocessConfig
from cxrlab.errors import ConfigError
from cxrlab.utils import atomic_write_text

log = logging.getLogger(__name__)


VARIANTS = ("ensemble", "shared")


SEED003_RISK_GROUPS = {
    "critical": ["Pneumothorax", "Pneumoperitoneum", "Mediastinal Widening", "Pleural Effusion"],
    "urgent": ["Nodule", "Consolidation", "Active Tuberculosis", "Advanced Tuberculosis",
               "Atelectasis"],
    "non-urgent": ["Support Device", "Pleural Calcification", "Interstitial Opacity"],
    "cardiomegaly": ["Cardiomegaly"],
}
"""Seed 003 Table 1 (Table 9 lists Atelectasis under non-urgent; Table 1 is followed)."""


@dataclass(frozen=True)
class ScreeningDataConfig:
    """Data of a screening recipe.

    Attributes:
        dataset: Adapter name (``vindr``, ``generic``, ...); options: its arguments.
        diseases: Classes that get a model (seed 003: 13); names of ``dataset``.
        unseen: Classes held out of training: their images are evaluated separately
            (seed 003 Table 9).
        split: Fractions by patient of the hard-labelled images (seed: 8:1:1) when the
            table has no ``split`` column; weak-labelled images always train.
        split_seed: Seed of that split.
        eval_sets: Further evaluation sets: name -> ``{dataset: ..., options: {...}}``
            (temporal, external...). The test split is the ``internal`` set.
        size, clip_percentiles, clahe, clahe_clip_limit, clahe_tile_grid, equalize:
            Seed 003 preprocessing (:func:`~cxrlab.data.screening.screening_preprocess`).
        channels, normalization: Network input (1 channel, ``unit`` [0, 1] by default).
        dilation: Structuring element of the lesion-mask dilation
            (:class:`~cxrlab.data.screening.DilationConfig`: enabled, shape, size, iterations).
        augment: Seed 003's training augmentations.
        batch_size: Images per step (seed: 4).
        num_workers: DataLoader workers.
        cache: Folder of the preprocessed store; empty = ``output.root/cache/...``.
        on_error: ``raise`` or ``skip`` unreadable images.
    """

    dataset: str = "vindr"
    options: Mapping[str, Any] = field(default_factory=dict)
    diseases: tuple[str, ...] = ()
    unseen: tuple[str, ...] = ()
    split: Mapping[str, float] = field(
        default_factory=lambda: {"train": 0.8, "valid": 0.1, "test": 0.1})
    split_seed: int = 0
    eval_sets: Mapping[str, Any] = field(default_factory=dict)
    size: int = 1024
    clip_percentiles: tuple[float, float] | None = (0.5, 99.5)
    clahe: bool = True
    clahe_clip_limit: float = 2.0
    clahe_tile_grid: int = 8
    equalize: bool = False
    channels: int = 1
    normalization: str = "unit"
    dilation: Mapping[str, Any] = field(default_factory=dict)
    augment: bool = True
    batch_size: int = 4
    num_workers: int = 0
    cache: str = ""
    on_error: str = "raise"


@dataclass(frozen=True)
class ScreeningModelConfig:
    """Networks: ``encoder`` (any timm body; seed: densenet121), ``num_classes`` (3, or 2
    for the ablation), ``pretrained`` (null, ``imagenet`` or a file), decoder widths,
    head dropout, and which ``variants`` to train (``ensemble``, ``shared``)."""

    encoder: str = "densenet121"
    num_classes: int = 3
    pretrained: str | None = "imagenet"
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    dropout: float = 0.0
    variants: tuple[str, ...] = ("ensemble", "shared")


@dataclass(frozen=True)
class ScreeningTrainConfig:
    """Optimisation (seed 003 §3.3.4). ``lam`` is λ of CE + λ·MSE; ``phase1_epochs`` /
    ``phase2_epochs`` bound the hard- and weak-label phases (seed: 300); ``patience``
    epochs without improvement halve the LR (seed: 50) and below ``min_lr`` stop;
    ``phase2_train_encoder`` false trains only the head on weak labels (the seed's
    wording); ``device`` is ``cpu``, ``cuda`` or ``auto``; ``workers`` > 1 trains that
    many networks at once in separate processes, each with ``threads`` torch threads (0 =
    PyTorch's default); ``devices`` > 1 trains each network with that many DDP processes
    (gloo on CPU, NCCL on CUDA; rank 0 writes the run)."""

    lam: float = 0.8
    lr: float = 1e-3
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    phase1_epochs: int = 300
    phase2_epochs: int = 300
    patience: int = 50
    lr_factor: float = 0.5
    min_lr: float = 1e-4
    monitor: str = "loss"
    phase2_train_encoder: bool = True
    device: str = "auto"
    workers: int = 1
    threads: int = 0
    devices: int = 1


@dataclass(frozen=True)
class SVMConfig:
    """The second classifier: ``sklearn.svm.SVC`` on standardized concatenated logits.

    ``fit_on``: ``train`` (training images; seed 003) or ``valid``. The operating point
    is always chosen on ``valid`` for ``target_sensitivity``."""

    kernel: str = "rbf"
    C: float = 1.0
    gamma: str = "scale"
    degree: int = 3
    class_weight: Any = "balanced"
    fit_on: str = "train"
    target_sensitivity: float = 0.99


@dataclass(frozen=True)
class AblationConfig:
    """One ablation: a ``name`` and ``key=value`` overrides of this recipe (Tables 5-7)."""

    name: str = ""
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScreeningOutputConfig:
    """``root``: runs go to ``root/<name>``; ``mlflow``: also log to MLflow;
    ``cost_batch_sizes``: batch sizes of the CPU/GPU inference timing in the report."""

    root: str = "runs"
    mlflow: bool = False
    experiment: str = "cxrlab-screening"
    cost_batch_sizes: tuple[int, ...] = (1,)


@dataclass(frozen=True)
class ScreeningConfig:
    """A screening recipe (see ``configs/screening_seed003.yaml``)."""

    name: str = "screening"
    seed: int = 0
    data: ScreeningDataConfig = field(default_factory=ScreeningDataConfig)
    model: ScreeningModelConfig = field(default_factory=ScreeningModelConfig)
    train: ScreeningTrainConfig = field(default_factory=ScreeningTrainConfig)
    svm: SVMConfig = field(default_factory=SVMConfig)
    risk_groups: Mapping[str, Any] = field(default_factory=lambda: dict(SEED003_RISK_GROUPS))
    ablations: tuple[AblationConfig, ...] = ()
    output: ScreeningOutputConfig = field(default_factory=ScreeningOutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    def preprocess(self) -> PreprocessConfig:
        d = self.data
        return PreprocessConfig(size=d.size, clip_percentiles=d.clip_percentiles,
                                pad_square=True, clahe=d.clahe, clahe_clip_limit=d.clahe_clip_limit,
                                clahe_tile_grid=d.clahe_tile_grid, equalize=d.equalize)

    def dilation(self) -> DilationConfig:

        return dilation_from_dict(dict(self.data.dilation))


def screening_config_from_dict(raw: Mapping[str, Any], overrides: list[str] | tuple[str, ...] = (),
                               base: Path | None = None) -> ScreeningConfig:
    """Build and check a :class:`ScreeningConfig` from a mapping plus ``key=value`` overrides;
    relative data paths resolve against ``base`` (the recipe's folder)."""
    data = json.loads(json.dumps(raw or {}))
    apply_overrides(data, list(overrides))
    cfg = build(ScreeningConfig, data, "")
    if base is not None:
        sets = {name: {**dict(spec), "options": resolve_options(dict(spec.get("options", {})), base, path_options(spec.get("dataset")))}
                for name, spec in cfg.data.eval_sets.items()}
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(
            cfg.data, options=resolve_options(dict(cfg.data.options), base, path_options(cfg.data.dataset)), eval_sets=sets))
    check_config(cfg)
    return cfg


def load_screening_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()
                          ) -> ScreeningConfig:
    """Read a YAML screening recipe (see :func:`screening_config_from_dict`).

    Raises:
        MissingFileError: No such recipe. ConfigError: Bad YAML, keys or values.
    """
    return read_recipe(path, lambda raw: screening_config_from_dict(raw, overrides, base=Path(path).parent),
                       "screening recipe")


def check_config(cfg: ScreeningConfig) -> None:
    """Reject recipes that cannot run (before any data is read)."""
    if not cfg.data.diseases:
        raise ConfigError("data.diseases", "name at least one disease to screen for")
    overlap = set(cfg.data.diseases) & set(cfg.data.unseen)
    if overlap:
        raise ConfigError("data.unseen", f"{sorted(overlap)} cannot be trained and unseen")
    bad = [v for v in cfg.model.variants if v not in VARIANTS]
    if bad or not cfg.model.variants:
        raise ConfigError("model.variants", f"choose from {VARIANTS}, got {list(cfg.model.variants)}")
    if cfg.svm.fit_on not in ("train", "valid"):
        raise ConfigError("svm.fit_on", f"must be train or valid, got {cfg.svm.fit_on!r}")
    if not 0 < cfg.svm.target_sensitivity <= 1:
        raise ConfigError("svm.target_sensitivity", "must be in (0, 1]")
    for group, members in cfg.risk_groups.items():
        if isinstance(members, str) or not isinstance(members, (list, tuple)):
            raise ConfigError(f"risk_groups.{group}", "must be a list of disease names")
    cfg.preprocess()
    cfg.dilation()


def save_screening_config(cfg: ScreeningConfig, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def slug(name: str) -> str:
    """File-name-safe form of a disease name (``"Pleural Effusion"`` -> ``pleural_effusion``)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "disease"
