"""The BraTS recipe (seed 004, Weninger et al. 2018): frozen dataclasses over cxrlab's recipe machinery.

Choices are ``typing.Literal`` fields, checked when the recipe loads with a "did you mean"
hint (:func:`cxrlab.config.base.build`); the output section is the shared
:class:`~cxrlab.config.OutputConfig`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cxrlab.config import OutputConfig, apply_overrides, read_recipe
from cxrlab.config.base import Recipe, build
from cxrlab.errors import ConfigError

Arch = Literal["unet", "dynunet"]
Regressor = Literal["random_forest", "gradient_boosting", "linear", "svr"]
SurvivalSource = Literal["predicted", "reference"]
BlendMode = Literal["gaussian", "constant"]
OnError = Literal["raise", "skip"]
Precision = Literal["32", "32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true"]
SURVIVAL_FEATURES = ("age", "distance_mm", "wt_ml", "tc_ml", "et_ml")


@dataclass(frozen=True)
class BratsDataConfig:
    """Where the cases are and how patches are drawn.

    Attributes:
        root: The BraTS folder (case folders, or the Decathlon's ``Task01_BrainTumour``).
        layout: ``auto``, ``brats2020``, ``brats2023`` or ``msd``.
        labels: ``auto`` (the layout's) or ``2020`` / ``2023`` / ``msd``.
        survival_csv: Survival CSV; null = ``survival_info.csv`` / ``survival_data.csv`` in root.
        split: Shares of cases for train / valid / test.
        split_seed: Seed of the case split.
        patch: Training patch size in voxels (Weninger: 128^3 fits a 12 GB GPU with a small batch).
        samples_per_case: Patches drawn from one cached case per visit.
        class_ratios: Sampling ratio of patch centres in background, NCR, ED, ET (MONAI's
            label-class crop; the poster: the three tumour classes represented).
        batch_size: Patches per step.
        num_workers: DataLoader (and caching) workers.
        cache: ``memory`` (MONAI ``CacheDataset``) or a folder (``PersistentDataset``):
            either way no NIfTI is decoded in the training loop.
        max_cases: Use only the first N cases (smoke runs); null = all.
        on_error: ``raise`` or ``skip`` cases with missing files and bad survival rows.
    """

    root: str = ""
    layout: str = "auto"
    labels: str = "auto"
    survival_csv: str | None = None
    split: Mapping[str, float] = field(default_factory=lambda: {"train": 0.7, "valid": 0.1, "test": 0.2})
    split_seed: int = 0
    patch: tuple[int, int, int] = (128, 128, 128)
    samples_per_case: int = 2
    class_ratios: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    batch_size: int = 2
    num_workers: int = 4
    cache: str = "memory"
    max_cases: int | None = None
    on_error: OnError = "raise"


@dataclass(frozen=True)
class BratsModelConfig:
    """The 3D U-Net: padded convolutions, instance norm, ReLU (MONAI ``UNet`` or ``DynUNet``).

    Attributes:
        arch: ``unet`` (MONAI ``UNet``) or ``dynunet`` (nnU-Net-style ``DynUNet``).
        channels: Feature maps per level.
        strides: Downsampling per level (one fewer than ``channels``).
        num_res_units: Residual units per block (``unet``; 0 = plain conv blocks as in Weninger).
        dropout: Dropout.
        stages: 1 = one network segments the brain box; 2 = Weninger's two stages: a locator
            (same architecture, two classes) finds the whole tumour on the brain box downsampled
            by ``locator_scale``, and the segmenter works inside the located box plus ``margin``.
        locator_scale: Downsampling factor of the locator's input (``stages: 2``).
        margin: Voxels added on each side of the located tumour box (``stages: 2``).
    """

    arch: Arch = "unet"
    channels: tuple[int, ...] = (32, 64, 128, 256)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 0
    dropout: float = 0.0
    stages: Literal[1, 2] = 1
    locator_scale: int = 2
    margin: int = 8


@dataclass(frozen=True)
class BratsTrainConfig:
    """Optimisation (Adam; Dice + cross-entropy) and the Lightning trainer.

    Attributes:
        epochs: Epochs (an epoch = every training case visited once).
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        lambda_dice, lambda_ce: Weights of MONAI ``DiceCELoss``'s terms.
        precision: ``32``, ``bf16-mixed`` or ``16-mixed``.
        accelerator, devices, strategy: Lightning (``strategy: ddp`` for several GPUs).
        deterministic: Deterministic algorithms.
        limit_train_batches: Cap on steps per epoch; null = all.
        val_every: Validate every N epochs.
    """

    epochs: int = 300
    lr: float = 1e-4
    weight_decay: float = 0.0
    lambda_dice: float = 1.0
    lambda_ce: float = 1.0
    precision: Precision = "32"
    accelerator: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"
    deterministic: bool = False
    limit_train_batches: int | None = None
    val_every: int = 1


@dataclass(frozen=True)
class BratsInferenceConfig:
    """Sliding-window inference.

    Attributes:
        overlap: Overlap of neighbouring windows (0-1).
        sw_batch_size: Windows per forward pass.
        mode: ``gaussian`` or ``constant`` blending.
        tta: Average the softmax over the 8 flips of the three axes.
    """

    overlap: float = 0.5
    sw_batch_size: int = 2
    mode: BlendMode = "gaussian"
    tta: bool = False


@dataclass(frozen=True)
class SurvivalConfig:
    """Survival regression (the poster: age and the tumour-brain centroid distance).

    Attributes:
        regressor: ``random_forest``, ``gradient_boosting``, ``linear`` or ``svr`` (scikit-learn).
        features: Among ``age``, ``distance_mm``, ``wt_ml``, ``tc_ml``, ``et_ml``.
        source: ``predicted`` (segment every survival case with the trained model) or
            ``reference`` (the reference segmentations).
        folds: Cross-validation folds.
        seed: Seed of the folds and the regressor.
        gtr_only: Keep only gross-total resections when the extent of resection is known.
        options: Keyword arguments of the regressor.
    """

    regressor: Regressor = "random_forest"
    features: tuple[str, ...] = SURVIVAL_FEATURES
    source: SurvivalSource = "predicted"
    folds: int = 5
    seed: int = 0
    gtr_only: bool = True
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BratsPhantomConfig:
    """Write a SYNTHETIC phantom set first (demo, tests); see :func:`cxrlab.data.synthetic_brain.write_phantoms`."""

    layout: str = "brats2020"
    n: int = 16
    size: int = 48
    seed: int = 0
    out: str | None = None


@dataclass(frozen=True)
class BratsConfig(Recipe):
    """A BraTS recipe (``configs/brats_weninger2018.yaml``, ``configs/demo_brats.yaml``)."""

    name: str = "brats"
    seed: int = 0
    data: BratsDataConfig = field(default_factory=BratsDataConfig)
    model: BratsModelConfig = field(default_factory=BratsModelConfig)
    train: BratsTrainConfig = field(default_factory=BratsTrainConfig)
    inference: BratsInferenceConfig = field(default_factory=BratsInferenceConfig)
    survival: SurvivalConfig = field(default_factory=SurvivalConfig)
    phantoms: BratsPhantomConfig | None = None
    output: OutputConfig = field(default_factory=OutputConfig)


def _check(cfg: BratsConfig) -> BratsConfig:
    """Checks across fields that the types cannot state."""
    if len(cfg.model.strides) != len(cfg.model.channels) - 1:
        raise ConfigError("model.strides", f"needs {len(cfg.model.channels) - 1} values (one fewer than channels)")
    factor = 1
    for s in cfg.model.strides:
        factor *= int(s)
    bad = [p for p in cfg.data.patch if p % factor]
    if bad:
        raise ConfigError("data.patch", f"{list(cfg.data.patch)} must be multiples of {factor} (product of strides)")
    if cfg.model.locator_scale < 1 or cfg.model.margin < 0:
        raise ConfigError("model.locator_scale", "locator_scale must be >= 1 and margin >= 0")
    unknown = sorted(set(cfg.survival.features) - set(SURVIVAL_FEATURES))
    if unknown or not cfg.survival.features:
        raise ConfigError("survival.features", f"unknown feature(s) {unknown}")
    return cfg


def config_from_mapping(raw: Mapping[str, Any], overrides: Sequence[str] = ()) -> BratsConfig:
    """A :class:`BratsConfig` from a nested mapping plus ``key=value`` overrides.

    Raises:
        ConfigError: Unknown keys, wrong types or values outside the choices.
    """
    data = json.loads(json.dumps(raw or {}))
    apply_overrides(data, overrides)
    return _check(build(BratsConfig, data, ""))


def load_brats_config(path: str | Path, overrides: Sequence[str] = ()) -> BratsConfig:
    """Read a YAML recipe; a relative ``data.root`` resolves against the working directory, then the recipe's folder.

    Raises:
        MissingFileError: No such recipe.
        ConfigError: Bad YAML, unknown keys, wrong types.
    """
    path = Path(path)
    cfg = read_recipe(path, lambda raw: config_from_mapping(raw, overrides))
    root = cfg.data.root
    if root and not Path(root).is_absolute() and not Path(root).exists():
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str((path.parent / root).resolve())))
    return cfg


def save_brats_config(cfg: BratsConfig, path: str | Path) -> Path:
    """Write the resolved recipe as YAML, atomically."""
    return cfg.save(path)
