"""BraTS data for training: brain crop, z-scoring, cached MONAI datasets, label-class patches, the case split.

Preprocessing follows the poster (Weninger et al. 2018): crop to the cuboid bounding box
of the brain (voxels non-zero in any channel), z-score each channel over its brain
voxels. Decoding and preprocessing run once per case (MONAI ``CacheDataset`` in memory,
or ``PersistentDataset`` on disk); the training loop only pads, samples patches whose
centres fall on each class in ``data.class_ratios`` (MONAI ``RandCropByLabelClassesd``)
and flips.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrlab.data.datasets.brats import BratsDataset
from cxrlab.errors import ConfigError
from cxrlab.tasks.brats.recipe import BratsConfig

log = logging.getLogger(__name__)

N_CLASSES = 4
"""Canonical classes: background, NCR, ED, ET."""


@dataclass
class Cropped:
    """A preprocessed case: channels cropped to the brain box and z-scored.

    Attributes:
        image: ``(4, x, y, z)`` float32.
        label: ``(1, x, y, z)`` uint8 canonical classes, or None.
        box_start, box_end: The crop in the full grid (``full[box_start:box_end]``).
        full_shape: The case's grid.
    """

    image: np.ndarray
    label: np.ndarray | None
    box_start: tuple[int, int, int]
    box_end: tuple[int, int, int]
    full_shape: tuple[int, int, int]


def brain_mask(image: np.ndarray) -> np.ndarray:
    """Voxels non-zero in any channel (the data are skull-stripped)."""
    return np.any(image != 0, axis=0)


def preprocess(image: np.ndarray, label: np.ndarray | None = None) -> Cropped:
    """Crop ``(C, X, Y, Z)`` to the brain's bounding box and z-score each channel over its brain voxels.

    Uses MONAI's ``generate_spatial_bounding_box`` and ``NormalizeIntensity(nonzero=True,
    channel_wise=True)``; voxels outside the brain stay 0. An empty image keeps the full grid.
    """
    from monai.transforms import NormalizeIntensity
    from monai.transforms.utils import generate_spatial_bounding_box

    full_shape = tuple(int(s) for s in image.shape[1:])
    if np.any(image != 0):
        start, end = generate_spatial_bounding_box(image, select_fn=lambda x: x != 0)
    else:
        start, end = [0, 0, 0], list(full_shape)
    box = tuple(slice(int(s), int(e)) for s, e in zip(start, end))
    cropped = np.ascontiguousarray(image[(slice(None), *box)], dtype=np.float32)
    normalized = NormalizeIntensity(nonzero=True, channel_wise=True)(cropped)
    normalized = np.asarray(normalized, dtype=np.float32)
    cropped_label = None if label is None else np.ascontiguousarray(label[box][None].astype(np.uint8))
    return Cropped(normalized, cropped_label, tuple(int(s) for s in start), tuple(int(e) for e in end), full_shape)


def uncrop(cropped: np.ndarray, prep: Cropped, fill: int = 0) -> np.ndarray:
    """Put a ``(x, y, z)`` array of the crop back into the case's full grid."""
    full = np.full(prep.full_shape, fill, dtype=cropped.dtype)
    full[tuple(slice(s, e) for s, e in zip(prep.box_start, prep.box_end))] = cropped
    return full


def open_dataset(cfg: BratsConfig) -> BratsDataset:
    """The recipe's BraTS folder (``data.root``), phantoms already written.

    Raises:
        ConfigError: ``data.root`` is not set.
    """
    if not cfg.data.root:
        raise ConfigError("data.root", "set data.root to the BraTS folder (or add a phantoms section)")
    return BratsDataset(cfg.data.root, layout=cfg.data.layout, labels=cfg.data.labels,
                        survival_csv=cfg.data.survival_csv, on_error=cfg.data.on_error)


def ensure_phantoms(cfg: BratsConfig) -> BratsConfig:
    """Write the recipe's SYNTHETIC phantom set when it has a ``phantoms`` section; point ``data.root`` at it."""
    if cfg.phantoms is None:
        return cfg
    from cxrlab.data.synthetic_brain import write_phantoms

    p = cfg.phantoms
    out = Path(p.out) if p.out else Path(cfg.output.root) / "phantoms"
    if not (out / "SYNTHETIC.txt").is_file():
        log.info("writing %d SYNTHETIC %s phantoms (%d voxels across) to %s", p.n, p.layout, p.size, out)
        write_phantoms(out, p.layout, n=p.n, size=p.size, seed=p.seed)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(out), layout=p.layout))


def split_cases(case_ids: list[str], shares: dict[str, float], seed: int) -> dict[str, list[str]]:
    """Shuffle the cases with ``seed`` and cut train / valid / test by ``shares`` (at least one each named > 0).

    Raises:
        ConfigError: Unknown split names, or too few cases for the non-zero shares.
    """
    unknown = sorted(set(shares) - {"train", "valid", "test"})
    if unknown:
        raise ConfigError("data.split", f"unknown part(s) {unknown}; use train, valid, test")
    total = sum(float(v) for v in shares.values())
    order = [case_ids[i] for i in np.random.default_rng(seed).permutation(len(case_ids))]
    n = len(order)
    counts = {k: int(round(n * float(shares.get(k, 0)) / total)) for k in ("valid", "test")}
    for key in counts:
        if float(shares.get(key, 0)) > 0:
            counts[key] = max(counts[key], 1)
    n_train = n - counts["valid"] - counts["test"]
    if n_train < 1:
        raise ConfigError("data.split", f"{n} case(s) are too few for the split {dict(shares)}")
    return {"train": sorted(order[:n_train]), "valid": sorted(order[n_train:n_train + counts["valid"]]),
            "test": sorted(order[n_train + counts["valid"]:])}


class LoadPreprocessed:
    """MONAI-style transform: ``{"case": id}`` -> ``{"case", "image", "label", "spacing"}``, cropped and z-scored.

    Deterministic, so ``CacheDataset`` runs it once per case.
    """

    def __init__(self, dataset: BratsDataset) -> None:
        self.dataset = dataset

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        case = self.dataset.load(item["case"])
        if case.label is None:
            raise ConfigError(item["case"], "a training or validation case needs a segmentation")
        prep = preprocess(case.image, case.label)
        return {"case": case.case_id, "image": prep.image, "label": prep.label,
                "spacing": np.asarray(case.spacing, dtype=np.float32)}


def train_transforms(cfg: BratsConfig) -> Any:
    """Load + preprocess (cached) -> pad to the patch -> label-class patches -> flips, intensity jitter."""
    from monai.transforms import (
        Compose,
        RandCropByLabelClassesd,
        RandFlipd,
        RandScaleIntensityd,
        RandShiftIntensityd,
        SpatialPadd,
    )

    keys = ["image", "label"]
    patch = list(cfg.data.patch)
    return Compose([
        SpatialPadd(keys, spatial_size=patch),
        RandCropByLabelClassesd(keys, label_key="label", spatial_size=patch, num_classes=N_CLASSES,
                                ratios=list(cfg.data.class_ratios), num_samples=cfg.data.samples_per_case,
                                warn=False),
        RandFlipd(keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys, prob=0.5, spatial_axis=1),
        RandFlipd(keys, prob=0.5, spatial_axis=2),
        RandScaleIntensityd("image", factors=0.1, prob=0.5),
        RandShiftIntensityd("image", offsets=0.1, prob=0.5),
    ])


def cached_dataset(cfg: BratsConfig, dataset: BratsDataset, case_ids: list[str], random: Any = None) -> Any:
    """A MONAI dataset over ``case_ids``: preprocessing cached, ``random`` transforms applied per visit."""
    from monai.data import CacheDataset, Dataset, PersistentDataset
    from monai.transforms import Compose

    load = LoadPreprocessed(dataset)
    items = [{"case": c} for c in case_ids]
    if cfg.data.cache == "memory":
        cached = CacheDataset(items, transform=load, cache_rate=1.0, num_workers=max(int(cfg.data.num_workers), 1),
                              progress=False)
    else:
        cached = PersistentDataset(items, transform=load, cache_dir=cfg.data.cache)
    if random is None:
        return cached
    return Dataset(cached, transform=Compose([random]) if not isinstance(random, Compose) else random)

