"""The pneumothorax recipe (seed 002): U-Nets, gate classifier, post-processing rows, CV.

A recipe only states what differs from :data:`SEED002_DEFAULTS` (Tables 4.2-4.4).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrlab.config import (
    DataConfig,
    ModelConfig,
    OutputConfig,
    TrainConfig,
    apply_overrides,
    read_recipe,
    resolve_paths,
)
from cxrlab.config.base import build
from cxrlab.errors import ConfigError

log = logging.getLogger(__name__)

THRESHOLDS: np.ndarray = np.round(np.arange(1, 101) / 100.0, 2)
"""Seed 002's search grid: 0.01, 0.02, ..., 1.00."""
METHODS = ("argmax", "threshold", "triplet")
METRICS = ("dice_per_image", "dice_global", "iou_global")
GATE_RULES = ("decision", "youden", "search")



MODELS = ("baseline", "cascade")


ROWS = ("argmax", "threshold", "tta", "triplet")


ROW_TITLES = {"argmax": "ArgMax", "threshold": "Raw threshold", "tta": "TTA", "triplet": "TTA + triplet"}


ROW_METHODS = {"argmax": ("argmax", False), "threshold": ("threshold", False), "tta": ("threshold", True),
               "triplet": ("triplet", True)}


@dataclass(frozen=True)
class SearchGrids:
    """Grids searched on validation (``postprocess`` section of a pneumothorax recipe).

    Attributes:
        thresholds: Pixel thresholds of the ``threshold`` method (seed 002: 0.01..1).
        min_area_fractions: Component-removal areas as fractions of the image area
            (0 = off), tried at the best threshold.
        top_thresholds, triplet_area_fractions, pixel_thresholds: The triplet grid
            (areas as fractions of the image area).
        gate_thresholds: Gate thresholds searched jointly with the mask parameters for
            the cascade; when given they replace ``gate_rule``.
        gate_rule: How the cascade's gate threshold is chosen when ``gate_thresholds``
            is empty: ``decision`` (default, seed 002's Algorithm 1: the classifier's own
            decision, probability >= ``gate_decision``); ``youden``: the gate's operating
            point on validation, :func:`gate_operating_point` (Youden's J, a cut between
            two validation probabilities, so a badly calibrated gate still gets its
            best cut); ``search``: every cut between two validation probabilities
            (:func:`gate_candidates`), searched jointly with the mask parameters for
            ``metric``. Tuned cuts follow the few validation images near them; on small
            validation folds they generalised worse than the decision on phantoms.
        gate_decision: The classifier's decision threshold of the ``decision`` rule.
        metric: What the search maximises (``dice_per_image``, the competition score).
    """

    thresholds: tuple[float, ...] = tuple(THRESHOLDS.tolist())
    min_area_fractions: tuple[float, ...] = (0.0,)
    top_thresholds: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
    triplet_area_fractions: tuple[float, ...] = (0.0, 0.0005, 0.001, 0.002, 0.004)
    pixel_thresholds: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5)
    gate_thresholds: tuple[float, ...] = ()
    gate_rule: str = "decision"
    gate_decision: float = 0.5
    metric: str = "dice_per_image"

    def __post_init__(self) -> None:
        if self.gate_rule not in GATE_RULES:
            raise ConfigError("postprocess.gate_rule", f"unknown rule {self.gate_rule!r}; choose from {GATE_RULES}")


@dataclass(frozen=True)
class UNetConfig:
    """The U-Nets (both baseline and One Case use it, seed 002 §4.4).

    Attributes:
        encoder: smp encoder name or timm model (``resnet34`` in seed 002).
        pretrained: ``imagenet``, null or a path to local encoder weights.
        classes: 2 (softmax pair, argmax as in seed 002) or 1 (sigmoid).
        decoder_channels: One channel count per encoder stage (3-5 stages).
        crop: Side of the random training crops (poster: 448 of a 480 rescale); null =
            train on the whole ``data.size`` image.
        augment: Joint image/mask augmentation of Table 4.1.
        pos_share: Share of positive images in each baseline batch (a
            :class:`~cxrlab.data.samplers.PositiveShareSampler`); null = natural share.
        one_case_epoch: ``positives`` (an epoch is one pass over the positive training
            images, seed 002's reading) or ``match`` (as many images per epoch as the
            baseline sees, positives cycled, so both U-Nets get the same number of
            updates — fairer on small sets).
    """

    encoder: str = "resnet34"
    pretrained: str | None = "imagenet"
    classes: int = 2
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    crop: int | None = None
    augment: bool = True
    pos_share: float | None = None
    one_case_epoch: str = "positives"


@dataclass(frozen=True)
class GateConfig:
    """The gate classifier: a classification recipe's model and train sections.

    Attributes:
        model: Classifier architecture (seed 002: ``resnext50_32x4d``).
        train: Its optimisation (seed 002: soft-F1 loss, RAdam, 127 epochs).
        data: Fields of the shared ``data`` section that differ for the gate (seed
            002: ``size: 224``).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PhantomConfig:
    """Write a SYNTHETIC SIIM-layout set first (demos and tests); see
    :func:`cxrlab.data.synthetic_layouts.write_dataset`.

    Attributes:
        n, size, seed: Images, their side, the seed.
        prevalence: Share of images with a pneumothorax.
        out: Folder; null = ``<output.root>/phantoms``.
    """

    n: int = 240
    size: int = 64
    seed: int = 0
    prevalence: float = 0.4
    out: str | None = None


@dataclass(frozen=True)
class CVConfig:
    """K-fold cross-validation by patient (``cxrlab seg cv``).

    Attributes:
        folds: Number of folds (seed 002: 5).
        seed: Seed of the fold assignment.
        stratify: Keep the share of positive images equal across folds.
    """

    folds: int = 5
    seed: int = 0
    stratify: bool = True


@dataclass(frozen=True)
class PneumothoraxConfig:
    """A pneumothorax recipe (``configs/pneumothorax_seed002.yaml``).

    ``data.split`` gives the test share of a plain ``seg train`` run and the valid
    share of the rest (checkpoint selection and post-processing tuning); in
    cross-validation the held-out fold replaces the test share.
    """

    name: str = "pneumothorax"
    seed: int = 0
    models: tuple[str, ...] = MODELS
    rows: tuple[str, ...] = ROWS
    data: DataConfig = field(default_factory=DataConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    postprocess: SearchGrids = field(default_factory=SearchGrids)
    cv: CVConfig = field(default_factory=CVConfig)
    phantoms: PhantomConfig | None = None
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


SEED002_DEFAULTS: dict[str, Any] = {
    "data": {"dataset": "siim", "tasks": ["Pneumothorax"], "size": 256, "channels": 3,
             "normalization": "imagenet", "split": {"train": 0.7, "valid": 0.1, "test": 0.2},
             "batch_size": 16, "augment": True},
    "train": {"phases": [{"epochs": 6, "freeze_body": True, "lr": 1e-3},
                         {"epochs": 12, "lr_body": 1e-4, "lr_head": 1e-3}],
              "loss": "jaccard", "optimizer": "adam", "weight_decay": 0.0, "monitor": "dice_per_image"},
    "gate": {"model": {"arch": "resnext50_32x4d", "head": "concat", "pretrained": "imagenet"},
             "train": {"phases": [{"epochs": 127, "lr": 1e-3}], "loss": "softf1", "optimizer": "radam",
                       "weight_decay": 0.0, "monitor": "auroc"},
             "data": {"size": 224}},
}
"""Seed 002's settings (Tables 4.2-4.4); a recipe only states what differs."""


def _merge(base: Any, update: Any) -> Any:
    if isinstance(base, Mapping) and isinstance(update, Mapping):
        out = dict(base)
        for key, value in update.items():
            out[key] = _merge(base.get(key), value) if key in base else value
        return out
    return update


def config_from_mapping(raw: Mapping[str, Any], overrides: Sequence[str] = ()) -> PneumothoraxConfig:
    """A :class:`PneumothoraxConfig` from a nested mapping (over :data:`SEED002_DEFAULTS`) plus overrides.

    Raises:
        ConfigError: Unknown keys, wrong types, unknown models/rows.
    """
    data = _merge(json.loads(json.dumps(SEED002_DEFAULTS)), json.loads(json.dumps(raw or {})))
    apply_overrides(data, overrides)
    cfg = build(PneumothoraxConfig, data, "")
    bad = [m for m in cfg.models if m not in MODELS] + [r for r in cfg.rows if r not in ROWS]
    if bad or not cfg.models or not cfg.rows:
        raise ConfigError("models/rows", f"models must come from {MODELS} and rows from {ROWS}; got "
                                         f"{list(cfg.models)} and {list(cfg.rows)}")
    return cfg


def load_pneumothorax_config(path: str | Path, overrides: Sequence[str] = ()) -> PneumothoraxConfig:
    """Read a YAML recipe; relative data paths resolve against the working directory, then its folder.

    Raises:
        MissingFileError: No such recipe.
        ConfigError: Bad YAML, unknown keys or wrong types.
    """
    cfg = read_recipe(path, lambda raw: config_from_mapping(raw, overrides))
    return resolve_paths(cfg, Path(path).parent)


