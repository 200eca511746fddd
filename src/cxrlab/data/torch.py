"""PyTorch view of any dataset adapter, read from a resolution cache or from the sources.

:class:`ImageDataset` turns an :class:`~cxrlab.data.datasets.base.XrayDataset` into a
``torch.utils.data.Dataset`` of dicts. With a :class:`~cxrlab.data.cache.ResolutionCache`
an item is one memory-map slice and :func:`~cxrlab.data.transforms.to_tensor`; without
one, each item decodes its file (:func:`~cxrlab.io.read_image`, through the adapter)
and runs :func:`~cxrlab.data.transforms.preprocess`. Both paths give identical tensors.

A DataLoader asks for a whole batch at once (``__getitems__``): without augmentation, a
cached batch is read in file order (one pass over the memory map, no per-item copy) and
normalized with one lookup-table pass per image and channel straight into the batch
tensor (in shared memory inside a worker), which :func:`collate_items` hands on without
the stack copy of ``default_collate``. With ``normalize=False`` images stay uint8 and the
consumer normalizes each batch where it lands (:meth:`ImageDataset.normalize_on_device`,
e.g. on the GPU after a 12x smaller host-to-device copy). Every path gives the values of
the per-item :func:`~cxrlab.data.transforms.to_tensor`, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

from cxrlab.data.cache import ResolutionCache
from cxrlab.data.transforms import (NORMALIZATIONS, PreprocessConfig, _normalization_table,
                                    preprocess, to_tensor)
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
        normalize: ``False``: ``image`` stays uint8 ``(1, S, S)`` (after augmentation);
            normalize each batch with :meth:`normalize_on_device` where it is used.

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
        normalize: bool = True,
    ) -> None:
        if channels not in (1, 3):
            raise ConfigError(None, f"channels must be 1 or 3, got {channels!r}")
        if normalization not in NORMALIZATIONS:
            raise ConfigError(None, f"normalization must be one of {NORMALIZATIONS}, got "
                                    f"{normalization!r}")
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
        self.normalize = bool(normalize)
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
        image, mask, known = self._augmented(i)
        image = np.ascontiguousarray(image)
        item: dict[str, Any] = {
            "image": (to_tensor(image, channels=self.channels, normalization=self.normalization)
                      if self.normalize else torch.from_numpy(image)[None]),
            "labels": self._labels[i].clone(),
            "index": i,
        }
        if mask is not None:
            item["mask"] = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]
            item["mask_known"] = known
        return item

    def __getitems__(self, ks: Sequence[int]) -> list[dict[str, Any]]:
        """The items ``ks`` (what a DataLoader's batch sampler asks for), as a list.

        Without a cache, item by item (:meth:`__getitem__`: decoding dominates). With
        one, the batch is built whole: each image is read (without augmentation in file
        order, so a cold cache is read sequentially, with read-ahead per block as in
        :meth:`_load`; with it in the sampler's order, each item through the augment
        exactly as :meth:`__getitem__` does) and normalized with one lookup-table pass
        straight into one batch tensor. The list carries that batch as ``collated``,
        which :func:`collate_items` returns as it is; ``default_collate`` stacks the
        items into equal tensors.
        """
        if self.cache is None:
            return [self[k] for k in ks]
        rows = self.indices[np.asarray(ks, dtype=np.int64)]
        n, size = len(rows), self.cache.size
        images = _batch_tensor((n, self.channels if self.normalize else 1, size, size),
                               torch.float32 if self.normalize else torch.uint8)
        out = images.numpy()
        table = _normalization_table(self.normalization, self.channels)
        masks = (_batch_tensor((n, 1, size, size), torch.float32) if self.with_masks
                 else None)
        known = np.zeros(n, dtype=bool)
        visit = np.argsort(rows, kind="stable") if self.augment is None else range(n)
        for k in visit:
            image, mask, known[k] = self._augmented(int(rows[k]), view=self.augment is None)
            image = np.ascontiguousarray(image)
            if self.normalize:
                for c in range(self.channels):
                    cv2.LUT(image, table[c], dst=out[k, c])
            else:
                out[k, 0] = image
            if masks is not None:
                masks.numpy()[k, 0] = mask
        index = torch.from_numpy(rows.copy())
        collated: dict[str, Any] = {"image": images, "labels": self._labels[index],
                                    "index": index}
        if masks is not None:
            collated.update(mask=masks, mask_known=torch.from_numpy(known))
        items = []
        for k in range(n):
            item = {"image": images[k], "labels": collated["labels"][k], "index": int(rows[k])}
            if masks is not None:
                item.update(mask=masks[k], mask_known=bool(known[k]))
            items.append(item)
        return ItemBatch(items, collated)

    def normalize_on_device(self, images: torch.Tensor) -> torch.Tensor:
        """A batch of this dataset's images, normalized on the device it is on.

        The hook for ``normalize=False``: call it on ``batch["image"]`` after the batch
        reached its device (e.g. in Lightning's ``on_after_batch_transfer``). Returns
        ``images`` unchanged when the dataset already normalizes (``normalize=True``).
        """
        if self.normalize:
            return images
        return normalize_batch(images, self.channels, self.normalization)

    def _augmented(self, i: int, view: bool = False
                   ) -> tuple[np.ndarray, np.ndarray | None, bool]:
        """:meth:`_load`, then the augment (if any)."""
        image, mask, known = self._load(i, view)
        if self.augment is not None:
            self._reseed_augment()
            out = (self.augment(image=image, mask=mask) if mask is not None
                   else self.augment(image=image))
            image = out["image"]
            if mask is not None:
                mask = out["mask"]
        return image, mask, known

    def _load(self, i: int, view: bool = False) -> tuple[np.ndarray, np.ndarray | None, bool]:
        """uint8 image, uint8 0/1 mask (or ``None`` without masks) and whether it is known;
        ``view``: read-only views of the cache instead of copies."""
        if self.cache is not None:
            if self.read_block:
                self.cache.prefetch_block(i, self.read_block)
            take = (lambda a: a) if view else np.array
            image = take(self.cache.images[i])
            if not self.with_masks:
                return image, None, False
            return image, take(self.cache.masks[i]), bool(self.cache.mask_known[i])
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


class ItemBatch(list):
    """The items of one batch, with the batch already stacked as ``collated``."""

    def __init__(self, items: list[dict[str, Any]], collated: dict[str, Any]) -> None:
        super().__init__(items)
        self.collated = collated


def collate_items(batch: Sequence[dict[str, Any]]) -> Any:
    """``collate_fn`` for :class:`ImageDataset` loaders: the batch :meth:`ImageDataset.__getitems__`
    stacked already (no second copy), else ``default_collate``. Both give the same tensors."""
    collated = getattr(batch, "collated", None)
    return collated if collated is not None else default_collate(batch)


def normalize_batch(images: torch.Tensor, channels: int = 1,
                    normalization: str = "imagenet") -> torch.Tensor:
    """uint8 images ``(B, 1, S, S)`` or ``(B, S, S)`` as normalized float32 ``(B, C, S, S)``.

    The values of :func:`~cxrlab.data.transforms.to_tensor` item by item (the same
    256-entry table, gathered on ``images.device``): normalize on the GPU after moving
    uint8 batches (a quarter of the bytes of one float channel).

    Raises:
        ConfigError: ``images`` is not uint8, or a bad ``channels`` / ``normalization``.
    """
    if images.dtype != torch.uint8:
        raise ConfigError("normalize_batch", f"images must be uint8, got {images.dtype}")
    if channels not in (1, 3) or normalization not in NORMALIZATIONS:
        raise ConfigError("normalize_batch", f"channels must be 1 or 3 and normalization one "
                                             f"of {NORMALIZATIONS}, got {channels!r}, "
                                             f"{normalization!r}")
    flat = images.reshape(images.shape[0], -1).long()
    table = torch.from_numpy(_normalization_table(normalization, channels)).to(images.device)
    values = table[:, flat]  # (C, B, S*S)
    side = images.shape[-1]
    return values.permute(1, 0, 2).reshape(images.shape[0], channels, -1, side).contiguous()


def _batch_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized tensor; in a DataLoader worker in shared memory, as
    ``default_collate`` allocates its batches, so passing it to the main process copies
    nothing."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    like = torch.empty(0, dtype=dtype)
    storage = like._typed_storage()._new_shared(math.prod(shape), device=like.device)
    return like.new(storage).resize_(shape)


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
