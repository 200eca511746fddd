"""Pneumothorax data: the SIIM-ACR images and masks of a recipe, split by patient, with
the joint image/mask augmentation (seed 002 Table 4.1) and the poster's rescale-and-crop."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrlab.config.pneumothorax import PneumothoraxConfig
from cxrlab.data.samplers import (
    EpochShuffleSampler,
    PositiveShareSampler,
    ShardedSampler,
)
from cxrlab.data.splits import patient_split
from cxrlab.data.synthetic_layouts import write_dataset
from cxrlab.data.torch import ImageDataset
from cxrlab.errors import ConfigError
from cxrlab.tasks.classification.data import (
    open_dataset,
    open_or_build_cache,
    preprocess_config,
)

log = logging.getLogger(__name__)


def ensure_phantoms(cfg: PneumothoraxConfig) -> PneumothoraxConfig:
    """Write the recipe's phantom set when it asks for one, and point ``data.options`` at it."""
    if cfg.phantoms is None:
        return cfg

    p = cfg.phantoms
    out = Path(p.out) if p.out else Path(cfg.output.root) / "phantoms"
    if not (out / "train-rle.csv").is_file():
        log.info("writing %d SYNTHETIC SIIM-layout phantoms (%d px) to %s", p.n, p.size, out)
        write_dataset("siim", out, n=p.n, size=p.size, seed=p.seed, prevalence=p.prevalence, overwrite=True)
    options = {**cfg.data.options, "rle_csv": str(out / "train-rle.csv"), "root": str(out)}
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, options=options))


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
            epoch_size: int | None = None, shard: bool = False) -> torch.utils.data.DataLoader:
    """A loader over ``indices``; ``shard``: a trainer's loader, each DDP rank reading its
    slice of the epoch's order (whole positive-share batches stay together)."""
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
    if shard:
        sampler = ShardedSampler(sampler, block=micro if isinstance(sampler, PositiveShareSampler) else 1)
    workers = int(cfg.data.num_workers)
    return torch.utils.data.DataLoader(ds, batch_size=micro, sampler=sampler, num_workers=workers,
                                       persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())


def _check_sizes(cfg: PneumothoraxConfig) -> None:
    factor = 2 ** len(cfg.unet.decoder_channels)
    for name, value in (("data.size", cfg.data.size), ("unet.crop", cfg.unet.crop)):
        if value is not None and value % factor:
            raise ConfigError(name, f"{value} px is not a multiple of {factor} (2 ** encoder depth)")
    if cfg.unet.crop is not None and cfg.unet.crop > cfg.data.size:
        raise ConfigError("unet.crop", f"crop {cfg.unet.crop} is larger than data.size {cfg.data.size}")
