"""Data side of classification: open the adapter, split by patient, cache, load.

The split is a pure function of the dataset and ``data.split_seed`` (not of the
training seed), so runs that differ in seed, architecture or loss see the same
validation and test cases — the condition of a paired DeLong comparison.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrlab.config import DataConfig, ExperimentConfig
from cxrlab.data.cache import auto_cache, ensure_cache
from cxrlab.data.datasets import load_dataset
from cxrlab.data.labels import parse_policies
from cxrlab.data.samplers import (
    BlockShuffleSampler,
    EpochShuffleSampler,
    ShardedSampler,
    block_items,
)
from cxrlab.data.splits import patient_split
from cxrlab.data.torch import ImageDataset, collate_items, default_train_augment
from cxrlab.data.transforms import PreprocessConfig
from cxrlab.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class SplitData:
    """One split: the adapter it comes from, its item indices, and its cache."""

    dataset: Any  # XrayDataset
    indices: np.ndarray
    cache: Any | None  # ResolutionCache

    @property
    def study_ids(self) -> np.ndarray:
        return self.dataset.table["study_id"].astype(str).to_numpy()


@dataclass
class PreparedData:
    """Everything the engine needs from the data side."""

    splits: dict[str, SplitData]
    task_names: list[str]
    label_columns: list[int]
    preprocess: PreprocessConfig
    channels: int
    normalization: str

    def task_labels(self, split: str) -> np.ndarray:
        """Labels of the trained tasks for every item of the split's source dataset."""
        return self.splits[split].dataset.labels[:, self.label_columns]


def preprocess_config(data: DataConfig) -> PreprocessConfig:
    """The preprocessing a recipe asks for (what the cache stores)."""
    return PreprocessConfig(
        size=data.size,
        clip_percentiles=tuple(data.clip_percentiles) if data.clip_percentiles else None,
        pad_square=True,
        clahe=data.clahe,
    )


def open_dataset(data: DataConfig, options: dict[str, Any]):
    """Open the configured adapter with the recipe's label policy and view filter."""
    policy = parse_policies(list(data.policy), default=data.default_policy)
    if "multiclass" in {policy.for_class(t) for t in data.tasks} :
        raise ConfigError(
            "data.policy",
            "the multiclass (U-MultiClass) policy is supported by `cxrlab data stats`; "
            "training heads are binary per class — use ones, zeros or ignore",
        )
    dataset = load_dataset(data.dataset, policy=policy, on_error=data.on_error, **options)
    if data.frontal_only:
        dataset = dataset.filter_views(frontal=True)
    return dataset


def task_columns(dataset, tasks: tuple[str, ...]) -> tuple[list[str], list[int]]:
    """Names and label columns of the trained tasks (all pathologies when empty)."""
    names = list(tasks) if tasks else list(dataset.pathologies)
    missing = [t for t in names if t not in dataset.pathologies]
    if missing:
        raise ConfigError("data.tasks", f"{missing} not among {dataset.name}'s classes {dataset.pathologies}")
    return names, [dataset.pathologies.index(t) for t in names]


def cache_store(root: Path) -> Path:
    """The folder of caches that ``cache: auto`` searches and builds in."""
    return Path(root) / "cache"


def open_or_build_cache(dataset, pcfg: PreprocessConfig, data: DataConfig, root: Path, workers: int,
                        role: str = "train"):
    """The resolution cache the recipe asks for, reused, updated or built.

    ``cache: auto`` finds the dataset's cache by content (relative paths, sizes,
    modification times, preprocessing) in ``root/cache`` — wherever the data lives — and
    updates it incrementally when source files changed. An explicit folder is the
    training set's cache (reused, updated, or refused with the cause when it was built
    with other settings); every other role (the separate validation set) gets its own
    cache, found among the explicit folder's neighbours or in ``root/cache``, so the two
    sets are never checked against each other.
    """
    if data.cache == "none":
        return None
    store = cache_store(root)
    if data.cache == "auto":
        result = auto_cache(dataset, pcfg, store, workers=workers, on_error=data.on_error)
    elif role == "train":
        result = ensure_cache(dataset, pcfg, Path(data.cache), workers=workers, on_error=data.on_error)
    else:
        result = auto_cache(dataset, pcfg, store, extra_stores=[Path(data.cache).parent], workers=workers,
                            on_error=data.on_error)
    log.info("%s set: %s", role, result.message())
    return result.cache


def _fractions(split: dict[str, float], drop_valid: bool) -> dict[str, float]:
    parts = {k: float(v) for k, v in split.items() if v > 0 and not (drop_valid and k == "valid")}
    total = sum(parts.values())
    if total <= 0 or "train" not in parts:
        raise ConfigError("data.split", f"needs a positive 'train' fraction, got {dict(split)}")
    return {k: v / total for k, v in parts.items()}


def prepare_data(cfg: ExperimentConfig, cache_root: Path | None = None) -> PreparedData:
    """Open and split the recipe's data, check both sets, then find or build their caches."""
    data = cfg.data
    if data.channels not in (1, 3):
        raise ConfigError("data.channels", f"must be 1 or 3, got {data.channels}")
    pcfg = preprocess_config(data)
    dataset = open_dataset(data, dict(data.options))
    names, columns = task_columns(dataset, data.tasks)
    separate_valid = bool(data.valid_options)
    valid = None
    if separate_valid:  # opened and checked before any cache is built
        valid = open_dataset(data, dict(data.valid_options))
        task_columns(valid, tuple(names))
        if len(valid) == 0:
            raise ConfigError("data.valid_options", "the validation set has no images")
    fractions = _fractions(dict(data.split), drop_valid=separate_valid)
    if len(fractions) == 1:
        parts = {"train": np.arange(len(dataset))}
    else:
        parts = patient_split(dataset.table["patient_id"].astype(str).to_numpy(),
                              fractions=fractions, seed=data.split_seed)
    if not separate_valid and len(parts.get("valid", [])) == 0:
        raise ConfigError("data.split", "the recipe yields no validation images")

    cache_root = Path(cache_root or cfg.output.root)
    workers = max(int(data.num_workers), 1)
    cache = open_or_build_cache(dataset, pcfg, data, cache_root, workers)
    splits = {name: SplitData(dataset, np.asarray(idx, dtype=np.int64), cache) for name, idx in parts.items()}
    if valid is not None:
        valid_cache = open_or_build_cache(valid, pcfg, data, cache_root, workers, role="valid")
        splits["valid"] = SplitData(valid, np.arange(len(valid)), valid_cache)
    return PreparedData(splits, names, columns, pcfg, data.channels, data.normalization)


def make_loader(prepared: PreparedData, split: str, cfg: ExperimentConfig, train: bool,
                shuffle_seed: int = 0, shard: bool = False,
                normalize: bool = True) -> torch.utils.data.DataLoader:
    """A DataLoader over one split (training: augmented, shuffled per epoch).

    ``normalize=False``: the batches' images stay uint8 ``(B, 1, S, S)``; the consumer
    normalizes them where they land (a :class:`~cxrlab.engine.base.TaskModule` built with
    ``input_norm``, see :func:`normalize_on_device`). Without a cache every item is
    decoded anyway, and the loader normalizes as usual.

    ``shard``: a loader of a (possibly DDP) trainer: each rank reads its slice of the
    epoch's order (:class:`ShardedSampler`); the trainer must pass
    ``use_distributed_sampler=False``. Loaders that must see the whole split in one
    process (evaluation after training) leave it False.
    """
    part = prepared.splits[split]
    augment = default_train_augment("classification", seed=cfg.seed) if (train and cfg.data.augment) else None
    block = block_items(part.cache.item_bytes) if part.cache is not None else None
    ds = ImageDataset(part.dataset, prepared.preprocess, channels=prepared.channels,
                      normalization=prepared.normalization, augment=augment, cache=part.cache,
                      indices=part.indices, read_block=block,
                      normalize=normalize or part.cache is None)
    micro = cfg.data.micro_batch or cfg.data.batch_size
    shuffle = train and cfg.train.shuffle
    if block is not None:
        # Quasi-random order over the cache: blocks read ahead sequentially, so a cache
        # larger than memory is not read item by item at random (see BlockShuffleSampler).
        sampler = BlockShuffleSampler(len(ds), block, seed=shuffle_seed, shuffle=shuffle)
    else:
        sampler = EpochShuffleSampler(len(ds), shuffle_seed, shuffle=shuffle)
    workers = int(cfg.data.num_workers)
    order = ShardedSampler(sampler) if shard else sampler
    # A last training batch of one image cannot be trained: the concat head's BatchNorm1d
    # needs two values per channel. Only that batch is dropped (the image is seen again in
    # the next epoch's order); every other split size keeps its last partial batch.
    lone_last = train and len(order) % micro == 1 and len(order) > 1
    if lone_last:
        log.info("%s: dropping the last training batch of 1 image (%d images, batch %d)", split, len(order), micro)
    return torch.utils.data.DataLoader(
        ds,
        batch_size=micro,
        sampler=order,
        num_workers=workers,
        drop_last=lone_last,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        collate_fn=collate_items,  # batches read and normalized whole (ImageDataset.__getitems__)
    )


def normalize_on_device(cfg: ExperimentConfig) -> bool:
    """Whether training loaders ship uint8 images for the trainer to normalize on its
    device (``data.normalize_on``; ``auto``: on a GPU only)."""
    where = cfg.data.normalize_on
    if where != "auto":
        return where == "device"
    accelerator = str(cfg.train.accelerator).lower()
    if accelerator in ("gpu", "cuda"):
        return True
    return accelerator == "auto" and torch.cuda.is_available()


def accumulation(cfg: ExperimentConfig) -> int:
    """Micro-batches per optimizer step so every run keeps the same effective batch."""
    micro = cfg.data.micro_batch or cfg.data.batch_size
    if micro <= 0 or cfg.data.batch_size % micro:
        raise ConfigError("data.micro_batch",
                          f"batch_size {cfg.data.batch_size} must be a multiple of micro_batch {micro}")
    return cfg.data.batch_size // micro
