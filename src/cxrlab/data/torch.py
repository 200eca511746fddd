"""PyTorch view of any dataset adapter, read from a resolution cache or from the sources.

:class:`ImageDataset` turns an :class:`~cxrlab.data.datasets.base.XrayDataset` into a
``torch.utils.data.Dataset`` of dicts. With a :class:`~cxrlab.data.cache.ResolutionCache`
an item is one memory-map slice and :func:`~cxrlab.data.transforms.to_tensor`; without
one, each item decodes its file (:func:`~cxrlab.io.read_image`, through the adapter)
and runs :func:`~cxrlab.data.transforms.preprocess`. Both paths give identical tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cxrlab.data.cache import ResolutionCache
from cxrlab.data.transforms import PreprocessConfig, preprocess, to_tensor
from cxrlab.errors import ConfigError

if TYPE_CHECKING:
    from cxrlab.data.datasets.base import XrayDataset

Augment = Callable[..., dict[str, Any]]
"""``augment(image=uint8 (S, S)[, mask=uint8 (S, S)]) -> {"image": ..., ["mask": ...]}``
(the albumentations calling convention)."""

AUGMENT_KINDS = ("classification", "segmentation")


class ImageDataset(Dataset):
    """Preprocessed images and labels of an adapter, as tensors.

    Args:
        dataset: Any adapter. Pass the full dataset the cache was built from and select
            rows with ``indices`` (``dataset.subset(...)`` would no longer match the
            cache).
        cfg: Preprocessing parameters; must equal the cache's when a cache is given.
        channels: 1, or 3 (the gray image repeated) for ImageNet-pretrained bodies.
        normalization: ``"imagenet"``, ``"xrv"`` or ``"unit"`` (see
            :func:`~cxrlab.data.transforms.to_tensor`).
        augment: Optional callable applied to the uint8 image (and mask) before
            :func:`to_tensor`, e.g. :func:`default_train_augment`. An augment with
            ``set_random_seed`` (albumentations keeps its own RNG, which global seeding
            does not reach) is reseeded from torch's seed whenever that changes: in a
            DataLoader worker from the worker's seed (workers do not repeat each other's
            draws), in the main process from ``torch.initial_seed()`` (which the engine
            sets per epoch), so augmented training is repeatable and a resumed run draws
            what an uninterrupted one would.
        cache: A :class:`ResolutionCache`, a cache folder (opened and validated against
            ``dataset`` and ``cfg``), or ``None`` to decode every item from its file.
            An opened cache is checked cheaply here (parameters, ``N``, ordered paths);
            source modification times are checked by :meth:`ResolutionCache.open`.
        with_masks: Also return the mask (the dataset must have masks).
        indices: Dataset rows to serve, in this order (default: all). Images the cache
            skipped as unreadable are left out.
        read_block: With a cache, read the cache ahead in blocks of this many items
            (:meth:`~cxrlab.data.cache.ResolutionCache.prefetch_block`, once per block
            and process): pair it with a
            :class:`~cxrlab.data.samplers.BlockShuffleSampler` of the same block size
            when the cache is larger than memory. ``None``: no read-ahead.

    Items are dicts: ``image`` FloatTensor ``(C, S, S)``; ``labels`` FloatTensor ``[K]``
    (``dataset.labels`` row, NaN kept); ``index`` int (the dataset row); with masks
    also ``mask`` FloatTensor ``(1, S, S)`` of 0/1 and ``mask_known`` bool (``False``
    where the source has no mask for that image; its mask is then all zeros).

    Raises:
        ConfigError: Bad ``channels``, ``indices`` or ``with_masks`` on a mask-less dataset.
        CacheError: The cache does not match ``dataset`` / ``cfg``.
    """

    def __init__(
        self,
        dataset: XrayDataset,
        cfg: PreprocessConfig,
        channels: int = 1,
        normalization: str = "imagenet",
        augment: Augment | None = None,
        cache: ResolutionCache | str | Path | None = None,
        with_masks: bool = False,
        indices: Sequence[int] | np.ndarray | None = None,
        read_block: int | None = None,
    ) -> None:
        if channels not in (1, 3):
            raise ConfigError(None, f"channels must be 1 or 3, got {channels!r}")
        if with_masks and not dataset.has_masks():
            raise ConfigError(None, f"with_masks=True but dataset {dataset.name!r} has no "
                                    "mask source")
        if isinstance(cache, (str, Path)):
            cache = ResolutionCache.open(cache, dataset=dataset, cfg=cfg)
        elif cache is not None:
            cache.check(dataset=dataset, cfg=cfg, check_sources=False)
        self.dataset = dataset
        self.cfg = cfg
        self.channels = channels
        self.normalization = normalization
        self.augment = augment
        self.cache = cache
        self.with_masks = with_masks
        self.indices = self._select(indices)
        self.read_block = int(read_block) if read_block else None
        self._labels = torch.from_numpy(np.asarray(dataset.labels, dtype=np.float32))
        self._augment_seed: int | None = None

    def _select(self, indices: Sequence[int] | np.ndarray | None) -> np.ndarray:
        n = len(self.dataset)
        if indices is None:
            selected = np.arange(n, dtype=np.int64)
        else:
            selected = np.asarray(indices)
            if selected.ndim != 1 or (selected.size and not np.issubdtype(selected.dtype,
                                                                          np.integer)):
                raise ConfigError(None, "indices must be a 1-D sequence of integers")
            selected = selected.astype(np.int64)
            bad = selected[(selected < 0) | (selected >= n)]
            if bad.size:
                raise ConfigError(None, f"index {int(bad[0])} out of range for a dataset of "
                                        f"{n} images")
        if self.cache is not None and self.cache.skipped:
            skipped = np.array([s["index"] for s in self.cache.skipped], dtype=np.int64)
            selected = selected[~np.isin(selected, skipped)]
        return selected

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, k: int) -> dict[str, Any]:
        i = int(self.indices[k])
        image, mask, known = self._load(i)
        if self.augment is not None:
            self._reseed_augment()
            out = (self.augment(image=image, mask=mask) if mask is not None
                   else self.augment(image=image))
            image = out["image"]
            if mask is not None:
                mask = out["mask"]
        item: dict[str, Any] = {
            "image": to_tensor(np.ascontiguousarray(image), channels=self.channels,
                               normalization=self.normalization),
            "labels": self._labels[i].clone(),
            "index": i,
        }
        if mask is not None:
            item["mask"] = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]
            item["mask_known"] = known
        return item

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray | None, bool]:
        """uint8 image, uint8 0/1 mask (or ``None`` without masks) and whether it is known."""
        if self.cache is not None:
            if self.read_block:
                self.cache.prefetch_block(i, self.read_block)
            image = np.array(self.cache.images[i])
            if not self.with_masks:
                return image, None, False
            return image, np.array(self.cache.masks[i]), bool(self.cache.mask_known[i])
        pixels = self.dataset.image(i).pixels
        if not self.with_masks:
            return preprocess(pixels, self.cfg), None, False
        source_mask = self.dataset.mask(i)
        if source_mask is None:
            image = preprocess(pixels, self.cfg)
            return image, np.zeros(image.shape, dtype=np.uint8), False
        image, mask = preprocess(pixels, self.cfg, source_mask)
        return image, (np.asarray(mask) > 0).astype(np.uint8), True

    def _reseed_augment(self) -> None:
        """Derive the augmentation stream from torch's seed (the worker's in a DataLoader
        worker, else the process's), which the engine sets per epoch; reseed when it changes."""
        info = torch.utils.data.get_worker_info()
        seed = info.seed if info is not None else torch.initial_seed()
        if seed == self._augment_seed:
            return
        self._augment_seed = seed
        set_seed = getattr(self.augment, "set_random_seed", None)
        if callable(set_seed):
            set_seed(int(seed % 2**32))


def default_train_augment(kind: str = "classification", seed: int | None = None) -> Augment:
    """Small albumentations pipeline for training on uint8 gray images.

    ``classification``: shift ±5 %, scale 0.9–1.1, rotation ±10° (zero fill, p 0.75) and
    brightness/contrast ±0.1 (p 0.75). No horizontal flip: chest anatomy is asymmetric
    (heart on the left, aortic knob, gastric bubble) and labels such as cardiomegaly
    depend on it, so a flipped radiograph is not a plausible sample.

    ``segmentation`` (seed 002, pneumothorax): horizontal flip p 0.5 (a pneumothorax can
    be on either side and the mask flips with the image), rotation ±10°, zoom 1.0–1.1
    (p 0.75) and brightness/contrast ±0.1 (p 0.75). Masks use nearest interpolation.

    Args:
        kind: ``"classification"`` or ``"segmentation"``.
        seed: Passed to ``albumentations.Compose`` (``None``: its own random state).

    Returns:
        A callable ``augment(image=..., mask=...) -> dict``.
    """
    import albumentations as A
    import cv2

    if kind not in AUGMENT_KINDS:
        raise ConfigError(None, f"augment kind must be one of {AUGMENT_KINDS}, got {kind!r}")
    color = A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.75)
    if kind == "classification":
        transforms = [
            A.Affine(translate_percent=(-0.05, 0.05), scale=(0.9, 1.1), rotate=(-10, 10),
                     border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=0.75),
            color,
        ]
    else:
        transforms = [
            A.HorizontalFlip(p=0.5),
            A.Affine(scale=(1.0, 1.1), rotate=(-10, 10), border_mode=cv2.BORDER_CONSTANT,
                     fill=0, fill_mask=0, p=0.75),
            color,
        ]
    return A.Compose(transforms, seed=seed)
