"""Pneumothorax segmentation (seed 002): baseline U-Net vs the classifier-gated "One Case" cascade.

One recipe trains up to three models on the same patient split:

* ``baseline``: a U-Net trained on every image (Table 4.2);
* ``one_case``: the same U-Net trained on positive images only (Table 4.4);
* ``gate``: a classifier (Table 4.3: ResNeXt50, soft-F1 loss, RAdam) trained with the
  classification pipeline (:func:`cxrlab.pipelines.classify.train`);

and the cascade (Algorithm 1) empties the One Case mask of every image the gate calls
negative. The U-Nets see the poster's (seed 004) rescale-and-crop when ``unet.crop`` is
set (``data.size: 480``, ``unet.crop: 448``) and the joint augmentation of Table 4.1.
Post-processing is tuned on the validation patients and scored on the test patients
(:mod:`cxrlab.pipelines.postprocess`, rows of Table 5.1).

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

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml

from cxrlab.config import (DataConfig, ModelConfig, OutputConfig, TrainConfig, _build, apply_overrides,
                           config_from_dict, read_recipe, resolve_paths)
from cxrlab.errors import ConfigError, MissingFileError
from cxrlab.pipelines.postprocess import SearchGrids
from cxrlab.pipelines.run_dir import claim_run_directory, run_status
from cxrlab.utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

MODELS = ("baseline", "cascade")
ROWS = ("argmax", "threshold", "tta", "triplet")
ROW_TITLES = {"argmax": "ArgMax", "threshold": "Raw threshold", "tta": "TTA", "triplet": "TTA + triplet"}
ROW_METHODS = {"argmax": ("argmax", False), "threshold": ("threshold", False), "tta": ("threshold", True),
               "triplet": ("triplet", True)}


# ------------------------------------------------------------------------------ recipe


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
    cfg = _build(PneumothoraxConfig, data, "")
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


def ensure_phantoms(cfg: PneumothoraxConfig) -> PneumothoraxConfig:
    """Write the recipe's phantom set when it asks for one, and point ``data.options`` at it."""
    if cfg.phantoms is None:
        return cfg
    from cxrlab.data.synthetic_layouts import write_dataset

    p = cfg.phantoms
    out = Path(p.out) if p.out else Path(cfg.output.root) / "phantoms"
    if not (out / "train-rle.csv").is_file():
        log.info("writing %d SYNTHETIC SIIM-layout phantoms (%d px) to %s", p.n, p.size, out)
        write_dataset("siim", out, n=p.n, size=p.size, seed=p.seed, prevalence=p.prevalence, overwrite=True)
    options = {**cfg.data.options, "rle_csv": str(out / "train-rle.csv"), "root": str(out)}
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, options=options))


# -------------------------------------------------------------------------------- data


@dataclass
class SegData:
    """The opened dataset, its resolution cache (with masks) and the patient split."""

    dataset: Any
    cache: Any
    preprocess: Any  # PreprocessConfig
    splits: dict[str, np.ndarray]

    def labels(self, split: str) -> np.ndarray:
        """1.0 where the image has a pneumothorax (non-empty mask), per split item."""
        return self.dataset.labels[self.splits[split], 0]


def _valid_fraction(cfg: PneumothoraxConfig) -> float:
    split = dict(cfg.data.split)
    train, valid = float(split.get("train", 0)), float(split.get("valid", 0))
    if train <= 0 or valid <= 0:
        raise ConfigError("data.split", f"needs positive 'train' and 'valid' shares, got {split}")
    return valid / (train + valid)


def open_data(cfg: PneumothoraxConfig, test_indices: np.ndarray | None = None) -> SegData:
    """Open the dataset, build/reuse the U-Net cache, split by patient.

    Args:
        cfg: The recipe.
        test_indices: The held-out fold (cross-validation); default: ``data.split['test']``
            of the patients.

    Raises:
        ConfigError: The dataset has no masks, or the split leaves a part empty.
    """
    from cxrlab.data.splits import patient_split
    from cxrlab.pipelines.classify_data import open_dataset, open_or_build_cache, preprocess_config

    if cfg.data.dataset != "siim":
        raise ConfigError("data.dataset", f"the pneumothorax pipeline reads the SIIM-ACR layout (train-rle.csv + "
                                          f"DICOMs, dataset: siim), got {cfg.data.dataset!r}")
    dataset = open_dataset(cfg.data, dict(cfg.data.options))
    pcfg = preprocess_config(cfg.data)
    cache = open_or_build_cache(dataset, pcfg, cfg.data, Path(cfg.output.root), max(int(cfg.data.num_workers), 1))
    patients = dataset.table["patient_id"].astype(str).to_numpy()
    everything = np.arange(len(dataset))
    if test_indices is None:
        test_share = float(dict(cfg.data.split).get("test", 0.0))
        if test_share > 0:
            parts = patient_split(patients, {"rest": 1.0 - test_share, "test": test_share}, seed=cfg.data.split_seed)
            rest, test = parts["rest"], parts["test"]
        else:
            rest, test = everything, np.zeros(0, dtype=np.int64)
    else:
        test = np.sort(np.asarray(test_indices, dtype=np.int64))
        rest = np.setdiff1d(everything, test)
    vf = _valid_fraction(cfg)
    inner = patient_split(patients[rest], {"train": 1.0 - vf, "valid": vf}, seed=cfg.data.split_seed)
    splits = {"train": rest[inner["train"]], "valid": rest[inner["valid"]], "test": test}
    for name in ("train", "valid"):
        if len(splits[name]) == 0:
            raise ConfigError("data.split", f"the split leaves no {name} images")
    return SegData(dataset, cache, pcfg, splits)


def joint_augment(crop: int | None = None, seed: int | None = None, augment: bool = True) -> Any:
    """Seed 002 Table 4.1 as one albumentations pipeline for an image and its mask.

    Flip p 0.5; symmetric (perspective) warp p 0.75 (corners moved by up to ~10 % of the
    side, fastai's magnitude 0.2); rotation ±10° p 0.75; zoom 1.0-1.1 p 0.75; brightness
    ±0.1 (fastai 0.4-0.6) p 0.75; contrast ×0.8-1.25 p 0.75. Then a random ``crop`` ×
    ``crop`` patch when given (seed 004's 448 crops of a 480 rescale). Masks are moved
    with nearest interpolation. ``augment=False`` keeps the crop only (None without one).
    """
    import albumentations as A
    import cv2

    if not augment and not crop:
        return None
    border = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0, "fill_mask": 0}
    transforms = [] if not augment else [
        A.HorizontalFlip(p=0.5),
        A.Perspective(scale=(0.0, 0.05), keep_size=True, p=0.75, **border),
        A.Affine(rotate=(-10, 10), p=0.75, **border),
        A.Affine(scale=(1.0, 1.1), p=0.75, **border),
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.0, p=0.75),
        A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=(-0.2, 0.25), p=0.75),
    ]
    if crop:
        transforms.append(A.RandomCrop(int(crop), int(crop)))
    return A.Compose(transforms, seed=seed)


def _loader(cfg: PneumothoraxConfig, data: SegData, indices: np.ndarray, train: bool, seed: int,
            augment: Any = None, pos_share: float | None = None,
            epoch_size: int | None = None) -> torch.utils.data.DataLoader:
    from cxrlab.data.samplers import PositiveShareSampler
    from cxrlab.data.torch import ImageDataset
    from cxrlab.engine.callbacks import EpochShuffleSampler

    ds = ImageDataset(data.dataset, data.preprocess, channels=cfg.data.channels,
                      normalization=cfg.data.normalization, augment=augment, cache=data.cache,
                      with_masks=True, indices=indices)
    micro = cfg.data.micro_batch or cfg.data.batch_size
    if train and pos_share is not None:
        labels = data.dataset.labels[ds.indices, 0]
        sampler: Any = PositiveShareSampler(labels, pos_share=pos_share, batch_size=micro, num_samples=epoch_size,
                                            generator=torch.Generator().manual_seed(seed))
    else:
        sampler = EpochShuffleSampler(len(ds), seed, shuffle=train and cfg.train.shuffle)
    workers = int(cfg.data.num_workers)
    return torch.utils.data.DataLoader(ds, batch_size=micro, sampler=sampler, num_workers=workers,
                                       persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())


# ------------------------------------------------------------------------------ training


def _check_sizes(cfg: PneumothoraxConfig) -> None:
    factor = 2 ** len(cfg.unet.decoder_channels)
    for name, value in (("data.size", cfg.data.size), ("unet.crop", cfg.unet.crop)):
        if value is not None and value % factor:
            raise ConfigError(name, f"{value} px is not a multiple of {factor} (2 ** encoder depth)")
    if cfg.unet.crop is not None and cfg.unet.crop > cfg.data.size:
        raise ConfigError("unet.crop", f"crop {cfg.unet.crop} is larger than data.size {cfg.data.size}")


def train_unet(cfg: PneumothoraxConfig, data: SegData, role: str, run_dir: Path, progress: bool = False) -> Path:
    """Train the ``baseline`` (all training images) or ``one_case`` (positives only) U-Net.

    The One Case U-Net also selects its checkpoint on positive validation images only.
    Phases follow ``train.phases`` (seed 002: 6 epochs encoder frozen, then 12).

    Returns:
        The best checkpoint (``run_dir/best.pt``).
    """
    from cxrlab.engine.callbacks import EpochSeed
    from cxrlab.engine.segmentation import SegmentationCheckpoints, SegmentationModule
    from cxrlab.losses.segmentation import create_segmentation_loss
    from cxrlab.models.segmentation import create_unet, save_segmentation_checkpoint
    from cxrlab.pipelines.classify import _phase_spec
    from cxrlab.pipelines.classify_data import accumulation

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
        loss = create_segmentation_loss(phase.loss or cfg.train.loss, **dict(
            phase.loss_options if phase.loss_options is not None else cfg.train.loss_options))
        model.freeze_body(phase.freeze_body)
        module = SegmentationModule(model, loss, _phase_spec(cfg, k), channels_last=cfg.train.channels_last)
        trainer = L.Trainer(
            max_epochs=phase.epochs, accelerator=cfg.train.accelerator, devices=cfg.train.devices,
            strategy=cfg.train.strategy, precision=cfg.train.precision, deterministic=cfg.train.deterministic,
            accumulate_grad_batches=accumulation(cfg),
            limit_train_batches=cfg.train.limit_train_batches or 1.0, num_sanity_val_steps=0,
            callbacks=[EpochSeed(seed, k), SegmentationCheckpoints(run_dir, k, save, cfg.train.monitor)],
            logger=False, enable_checkpointing=False, enable_progress_bar=progress,
            enable_model_summary=False, default_root_dir=str(run_dir))
        augment = joint_augment(cfg.unet.crop, seed=seed * 101 + k,
                                augment=cfg.data.augment and cfg.unet.augment)
        trainer.fit(module, _loader(cfg, data, train_idx, True, seed * 31 + k, augment, pos_share, epoch_size),
                    _loader(cfg, data, valid_idx, False, 0))
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
    return config_from_dict({
        "name": "gate", "seed": cfg.seed, "data": data,
        "model": dataclasses.asdict(cfg.gate.model), "train": dataclasses.asdict(cfg.gate.train),
        "output": {"root": str(root), "mlflow": cfg.output.mlflow, "experiment": cfg.output.experiment}})


def train_gate(cfg: PneumothoraxConfig, data: SegData, run_dir: Path, progress: bool = False) -> Path:
    """Train the gate with the classification pipeline on the train + valid images.

    The classification pipeline splits those images by patient with the same seed and
    shares, so the gate validates on exactly the U-Nets' validation patients (checked).

    Returns:
        The gate checkpoint the cascade uses (:func:`gate_checkpoint`).
    """
    from cxrlab.pipelines.classify import train as train_classifier

    rest = np.concatenate([data.splits["train"], data.splits["valid"]])
    csv = _gate_csv(data, rest, run_dir / "gate_data" / "train-rle.csv")
    gate_dir = train_classifier(gate_config(cfg, csv, run_dir), progress=progress)
    split = json.loads((gate_dir / "split.json").read_text())
    mine = sorted(data.dataset.table["patient_id"].astype(str).iloc[data.splits["valid"]].unique())
    if split.get("valid", {}).get("patients") != mine:
        log.warning("the gate's validation patients differ from the U-Nets'; gate thresholds tuned on "
                    "validation may be optimistic")
    return gate_checkpoint(run_dir)


GATE_CHECKPOINTS = {"auroc": "best_auroc.pt", "loss": "best_loss.pt"}
"""The gate recipe's ``train.monitor`` -> the classification run's checkpoint the cascade uses."""


def gate_checkpoint(run_dir: str | Path) -> Path:
    """The gate checkpoint of a pneumothorax run, picked by the gate recipe's ``train.monitor``.

    ``auroc`` (default, seed 002) -> ``gate/best_auroc.pt``; ``loss`` -> ``gate/best_loss.pt``.
    On a small validation fold the gate's AUROC saturates at 1.0 within a few epochs, so
    the first epoch to reach it would be kept; the validation loss keeps ranking them.

    Raises:
        MissingFileError: The run has no trained gate.
    """
    gate_dir = Path(run_dir) / "gate"
    config = gate_dir / "config.yaml"
    monitor = "auroc"
    if config.is_file():
        raw = yaml.safe_load(config.read_text()) or {}
        monitor = str((raw.get("train") or {}).get("monitor", "auroc"))
    path = gate_dir / GATE_CHECKPOINTS.get(monitor, GATE_CHECKPOINTS["auroc"])
    if not path.is_file():
        raise MissingFileError(path, "the run has no gate checkpoint; did the gate's training finish?")
    return path


def _write_split(run_dir: Path, data: SegData) -> None:
    table = data.dataset.table
    summary = {}
    for name, idx in data.splits.items():
        part = table.iloc[idx]
        summary[name] = {"n_images": int(len(idx)), "n_positive": int(np.sum(data.dataset.labels[idx, 0] == 1)),
                         "indices": [int(i) for i in idx], "image_ids": part["image_id"].astype(str).tolist(),
                         "patients": sorted(part["patient_id"].astype(str).unique().tolist())}
    atomic_write_json(run_dir / "split.json", summary)


def train(cfg: PneumothoraxConfig, test_indices: np.ndarray | None = None, progress: bool = False) -> Path:
    """Train every model the recipe's ``models`` need, then evaluate; returns the run directory.

    Args:
        cfg: The recipe (phantoms are written first when it has a ``phantoms`` section).
        test_indices: A cross-validation fold to hold out (default: ``data.split['test']``).
        progress: Lightning progress bars.

    Raises:
        ConfigError: The run directory already holds a run.
    """
    from cxrlab.pipelines.pneumothorax_cv import evaluate_run

    cfg = ensure_phantoms(cfg)
    run_dir = claim_run_directory(Path(cfg.output.root) / cfg.name)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    with run_status(run_dir) as status:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        data = open_data(cfg, test_indices)
        _write_split(run_dir, data)
        if "baseline" in cfg.models:
            train_unet(cfg, data, "baseline", run_dir / "baseline", progress)
        if "cascade" in cfg.models:
            train_unet(cfg, data, "one_case", run_dir / "one_case", progress)
            train_gate(cfg, data, run_dir, progress)
        metrics = evaluate_run(run_dir, cfg=cfg, data=data)
        status.finished()
        if cfg.output.mlflow:
            _log_mlflow(run_dir, cfg, metrics)
    return run_dir


def _log_mlflow(run_dir: Path, cfg: PneumothoraxConfig, metrics: dict[str, Any]) -> str:
    """Log the recipe's main settings, the test scores per model and row, and the tables."""
    import mlflow

    from cxrlab.engine.tracking import mlflow_run

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
