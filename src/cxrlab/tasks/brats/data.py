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
from pathlib import Path
from typing import Any

import numpy as np

from cxrlab.config.brats import BratsConfig
from cxrlab.data.brain import (
    box_slices,
    downsample_image,
    downsample_mask,
    preprocess,
    tumour_box,
)
from cxrlab.data.datasets.brats import CANONICAL, BratsDataset
from cxrlab.data.synthetic_brain import write_phantoms
from cxrlab.errors import ConfigError

log = logging.getLogger(__name__)

N_CLASSES = len(CANONICAL)
"""Canonical classes: background, NCR, ED, ET."""
STAGES = ("full", "locator", "segmenter")
"""What a cached case holds: the brain box (one stage), its downsampled version with the whole
tumour as the target (two stages' locator), or the reference tumour box plus margin (segmenter)."""


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

    ``stage`` (:data:`STAGES`): ``full`` keeps the brain box; ``locator`` downsamples it by
    ``scale`` with the whole tumour (0/1) as the label; ``segmenter`` cuts the reference
    tumour's box plus ``margin`` out of it (the brain box when the case has no tumour).
    Deterministic, so ``CacheDataset`` runs it once per case.
    """

    def __init__(self, dataset: BratsDataset, stage: str = "full", scale: int = 2, margin: int = 8) -> None:
        if stage not in STAGES:
            raise ConfigError("stage", f"unknown stage {stage!r}; choose from {', '.join(STAGES)}")
        self.dataset = dataset
        self.stage, self.scale, self.margin = stage, scale, margin

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        case = self.dataset.load(item["case"])
        if case.label is None:
            raise ConfigError(item["case"], "a training or validation case needs a segmentation")
        prep = preprocess(case.image, case.label)
        image, label = prep.image, prep.label
        spacing = np.asarray(case.spacing, dtype=np.float32)
        if self.stage == "locator":
            image = downsample_image(image, self.scale)
            label = downsample_mask(label[0] > 0, self.scale)[None].astype(np.uint8)
            spacing = spacing * self.scale
        elif self.stage == "segmenter":
            box = tumour_box(label[0] > 0, self.margin)
            if box is not None:
                region = box_slices(box)
                image = np.ascontiguousarray(image[(slice(None), *region)])
                label = np.ascontiguousarray(label[(slice(None), *region)])
        return {"case": case.case_id, "image": image, "label": label, "spacing": spacing}


def train_transforms(cfg: BratsConfig, n_classes: int = N_CLASSES) -> Any:
    """Load + preprocess (cached) -> pad to the patch -> label-class patches -> flips, intensity jitter.

    ``n_classes`` 2 (the locator) samples patch centres on background and tumour alike.
    """
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
        RandCropByLabelClassesd(keys, label_key="label", spatial_size=patch, num_classes=n_classes,
                                ratios=list(cfg.data.class_ratios) if n_classes == N_CLASSES else [1.0] * n_classes,
                                num_samples=cfg.data.samples_per_case,
                                warn=False),
        RandFlipd(keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys, prob=0.5, spatial_axis=1),
        RandFlipd(keys, prob=0.5, spatial_axis=2),
        RandScaleIntensityd("image", factors=0.1, prob=0.5),
        RandShiftIntensityd("image", offsets=0.1, prob=0.5),
    ])


def cached_dataset(cfg: BratsConfig, dataset: BratsDataset, case_ids: list[str], random: Any = None,
                   stage: str = "full") -> Any:
    """A MONAI dataset over ``case_ids``: preprocessing (for ``stage``) cached, ``random`` transforms per visit.

    A ``PersistentDataset`` keeps each stage in a sub-folder of ``data.cache`` of its own.
    """
    from monai.data import CacheDataset, Dataset, PersistentDataset
    from monai.transforms import Compose

    load = LoadPreprocessed(dataset, stage, cfg.model.locator_scale, cfg.model.margin)
    items = [{"case": c} for c in case_ids]
    if cfg.data.cache == "memory":
        cached = CacheDataset(items, transform=load, cache_rate=1.0, num_workers=max(int(cfg.data.num_workers), 1),
                              progress=False)
    else:
        cached = PersistentDataset(items, transform=load, cache_dir=Path(cfg.data.cache) / stage)
    if random is None:
        return cached
    return Dataset(cached, transform=Compose([random]) if not isinstance(random, Compose) else random)

