"""The MRNet recipe (knee MRI, issue 15): frozen dataclasses on :class:`~cxrlab.config.base.Recipe`.

``configs/mrnet_bien2018.yaml`` holds the paper's settings; ``configs/demo_mrnet.yaml`` trains
on SYNTHETIC phantoms at a small size. Choices (normalization, monitor, precision, tasks,
planes, ...) are checked at load with a did-you-mean hint; the output section is the shared
:class:`~cxrlab.config.classification.OutputConfig`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cxrlab.config.base import Recipe, apply_overrides, build, look_up_option, read_recipe
from cxrlab.config.classification import OutputConfig, Precision
from cxrlab.data.datasets.mrnet import TASKS
from cxrlab.errors import ConfigError
from cxrlab.io.volume import PLANES

Normalization = Literal["imagenet", "unit"]
OnError = Literal["raise", "skip"]
Monitor = Literal["auroc", "loss"]
OperatingPoint = Literal["fixed", "youden"]


@dataclass(frozen=True)
class MRNetDataConfig:
    """Where the exams come from and how slices are prepared.

    Attributes:
        root: An MRNet-v1.0 folder (or its parent); its ``train`` split trains, ``valid`` is held out.
        train_csv, valid_csv: Generic exam CSVs instead of ``root``
            (:func:`cxrlab.data.datasets.mrnet.open_exam_csv`).
        tune_fraction: Share of the training exams held out to pick each network's checkpoint
            (the reported split is never used for any choice).
        split_seed: Seed of that hold-out.
        size: Slice side after resizing (paper: 256).
        normalization: ``imagenet`` or ``unit``.
        augment: MRNet's rotation, shift and flip on training series.
        on_error: ``raise`` or ``skip`` for bad exams.
        num_workers: DataLoader workers.
    """

    root: str | None = None
    train_csv: str | None = None
    valid_csv: str | None = None
    tune_fraction: float = 0.1
    split_seed: int = 0
    size: int = 256
    normalization: Normalization = "imagenet"
    augment: bool = True
    on_error: OnError = "raise"
    num_workers: int = 0


@dataclass(frozen=True)
class MRNetModelConfig:
    """Attributes:
        arch: ``alexnet`` (torchvision) or a timm model name.
        pretrained: ``imagenet`` (download), null (random init) or a local weights file.
    """

    arch: str = "alexnet"
    pretrained: str | None = "imagenet"


@dataclass(frozen=True)
class MRNetTrainConfig:
    """Optimisation of each network (paper: Adam 1e-5, weight decay 0.01, LR x0.3 after 5
    epochs without improvement of the validation loss, up to 50 epochs, one exam per step,
    BCE weighted by class frequency).

    Attributes:
        epochs, lr, weight_decay, patience, factor: As above.
        weighted_loss: Weight positives by negatives / positives.
        monitor: ``auroc`` or ``loss`` on the tune exams picks the checkpoint used.
        precision, accelerator, devices, deterministic: Lightning's.
        processes: Networks trained at once (worker processes; 1 = in this process).
        limit_train_exams: Cap on exams per epoch (smoke tests); null = all.
        threads: CPU threads of each training process (``torch.set_num_threads``); null =
            PyTorch's default. One thread per process is much faster than two on a busy
            2-core machine (measured: 38 ms vs 195 ms per 12-slice step at 64 px).
    """

    epochs: int = 50
    lr: float = 1e-5
    weight_decay: float = 0.01
    patience: int = 5
    factor: float = 0.3
    weighted_loss: bool = True
    monitor: Monitor = "auroc"
    precision: Precision = "32"
    accelerator: str = "auto"
    devices: Any = 1
    deterministic: bool = True
    processes: int = 1
    limit_train_exams: int | None = None
    threads: int | None = None


@dataclass(frozen=True)
class KneePhantomConfig:
    """Write SYNTHETIC MRNet-layout phantoms first and train on them (demos, tests).

    Attributes:
        n_train, n_valid, grid, seed: Exams per split, slice side, seed.
        slices: ``[min, max]`` slices per plane.
        prevalence: Share of each finding (``acl``, ``meniscus``, ``other``).
        out: Folder; null = ``<output.root>/phantoms/MRNet-v1.0``.
    """

    n_train: int = 60
    n_valid: int = 40
    grid: int = 48
    seed: int = 0
    slices: tuple[int, int] = (10, 16)
    prevalence: Mapping[str, float] = field(default_factory=lambda: {"acl": 0.4, "meniscus": 0.4, "other": 0.3})
    out: str | None = None


@dataclass(frozen=True)
class MRNetConfig(Recipe):
    """A whole MRNet recipe; the run folder is ``output.root/name``.

    Attributes:
        tasks, planes: The grid (paper: 3 x 3).
        threshold: Operating threshold on every probability (paper: 0.5).
        operating_point: ``fixed`` (``threshold``) or ``youden``: per task and model, the
            threshold that maximises sensitivity + specificity on the tune exams (whose split is
            stratified so both classes are there); ``fixed`` is the fallback when they hold one class.
    """

    name: str = "mrnet"
    seed: int = 0
    tasks: tuple[str, ...] = TASKS
    planes: tuple[str, ...] = PLANES
    threshold: float = 0.5
    operating_point: OperatingPoint = "fixed"
    data: MRNetDataConfig = field(default_factory=MRNetDataConfig)
    model: MRNetModelConfig = field(default_factory=MRNetModelConfig)
    train: MRNetTrainConfig = field(default_factory=MRNetTrainConfig)
    phantoms: KneePhantomConfig | None = None
    output: OutputConfig = field(default_factory=lambda: OutputConfig(experiment="mrnet"))


def config_from_mapping(raw: Mapping[str, Any], overrides: Sequence[str] = ()) -> MRNetConfig:
    """Build and check a recipe from a mapping plus ``key=value`` overrides.

    Raises:
        ConfigError: Unknown keys or values.
    """
    data = apply_overrides(json.loads(json.dumps(raw or {})), overrides)
    cfg = build(MRNetConfig, data, "")
    for key, chosen, choices in (("tasks", cfg.tasks, TASKS), ("planes", cfg.planes, PLANES)):
        if not chosen:
            raise ConfigError(key, f"choose at least one of {list(choices)}")
        for index, value in enumerate(chosen):
            look_up_option(value, choices, f"{key}[{index}]")
    if not 0.0 < cfg.data.tune_fraction < 1.0:
        raise ConfigError("data.tune_fraction", f"must lie in (0, 1), got {cfg.data.tune_fraction}")
    if cfg.data.size < 63:
        raise ConfigError("data.size", f"AlexNet's features need slices of at least 63 px, got {cfg.data.size}")
    sources = [cfg.data.root is not None or cfg.phantoms is not None, cfg.data.train_csv is not None]
    if sum(sources) != 1:
        raise ConfigError("data", "give exactly one source: data.root (MRNet-v1.0), phantoms, or "
                                  "data.train_csv/valid_csv")
    return cfg


def _resolve(value: str | None, base: Path) -> str | None:
    if value is None or Path(value).is_absolute() or Path(value).exists():
        return None if value is None else str(Path(value).resolve())
    return str((base / value).resolve())


def load_mrnet_config(path: str | Path, overrides: Sequence[str] = ()) -> MRNetConfig:
    """Read a YAML recipe; data paths resolve against the working directory, then the recipe's folder.

    Raises:
        MissingFileError: No such recipe.
        ConfigError: Bad YAML, unknown keys or values.
    """
    cfg = read_recipe(path, lambda raw: config_from_mapping(raw, overrides))
    base = Path(path).parent
    data = dataclasses.replace(cfg.data, root=_resolve(cfg.data.root, base),
                               train_csv=_resolve(cfg.data.train_csv, base),
                               valid_csv=_resolve(cfg.data.valid_csv, base))
    return dataclasses.replace(cfg, data=data)


def read_run_config(run_dir: str | Path) -> MRNetConfig:
    """The recipe a run was trained with (``RUN/config.yaml``).

    Raises:
        MissingFileError: ``run_dir`` holds no ``config.yaml``.
        ConfigError: It does not hold an MRNet recipe.
    """
    return read_recipe(Path(run_dir) / "config.yaml", config_from_mapping,
                       "MRNet run recipe (not an MRNet run folder?)")
