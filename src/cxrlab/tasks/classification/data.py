"""Data side of classification: open the adapter, split by patient, cache, load.

The split is a pure function of the dataset and ``data.split_seed`` (not of the
training seed), so runs that differ in seed, architecture or loss see the same
validation and test cases — the condition of a paired DeLong comparison.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrlab.config import DataConfig, ExperimentConfig
from cxrlab.data.transforms import PreprocessConfig
from cxrlab.errors import CacheError, ConfigError

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
    from cxrlab.data.datasets import load_dataset
    from cxrlab.data.labels import parse_policies

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


def dataset_fingerprint(dataset, pcfg: PreprocessConfig) -> str:
    """Short hash of the dataset's image list and the preprocessing parameters."""
    digest = hashlib.sha1()
    digest.update(dataset.name.encode())
    digest.update("\n".join(dataset.table["path"].astype(str)).encode())
    digest.update(json.dumps(pcfg.to_dict(), sort_keys=True).encode())
    return digest.hexdigest()[:12]


def open_or_build_cache(dataset, pcfg: PreprocessConfig, data: DataConfig, root: Path, workers: int):
    """The resolution cache the recipe asks for; built once when ``cache: auto``."""
    from cxrlab.data.cache import ResolutionCache, build_cache

    if data.cache == "none":
        return None
    if data.cache == "auto":
        folder = Path(root) / "cache" / f"{dataset.name}-{dataset_fingerprint(dataset, pcfg)}-{pcfg.size}"
    else:
        folder = Path(data.cache)
    if folder.exists():
        try:
            return ResolutionCache.open(folder, dataset=dataset, cfg=pcfg)
        except CacheError:
            if data.cache != "auto":
                raise
            log.warning("cache %s is stale; rebuilding it", folder)
    log.info("building the %d px resolution cache of %d images in %s", pcfg.size, len(dataset), folder)
    return build_cache(dataset, pcfg, folder, workers=workers, progress=False,
                       on_error=data.on_error, overwrite=True)


def _fractions(split: dict[str, float], drop_valid: bool) -> dict[str, float]:
    parts = {k: float(v) for k, v in split.items() if v > 0 and not (drop_valid and k == "valid")}
    total = sum(parts.values())
    if total <= 0 or "train" not in parts:
        raise ConfigError("data.split", f"needs a positive 'train' fraction, got {dict(split)}")
    return {k: v / total for k, v in parts.items()}


def prepare_data(cfg: ExperimentConfig, cache_root: Path | None = None) -> PreparedData:
    """Open, split and cache the recipe's data."""
    from cxrlab.data.splits import patient_split

    data = cfg.data
    if data.channels not in (1, 3):
        raise ConfigError("data.channels", f"must be 1 or 3, got {data.channels}")
    pcfg = preprocess_config(data)
    dataset = open_dataset(data, dict(data.options))
    names, columns = task_columns(dataset, data.tasks)
    cache_root = Path(cache_root or cfg.output.root)
    workers = max(int(data.num_workers), 1)
    cache = open_or_build_cache(dataset, pcfg, data, cache_root, workers)

    separate_valid = bool(data.valid_options)
    fractions = _fractions(dict(data.split), drop_valid=separate_valid)
    if len(fractions) == 1:
        parts = {"train": np.arange(len(dataset))}
    else:
        parts = patient_split(dataset.table["patient_id"].astype(str).to_numpy(),
                              fractions=fractions, seed=data.split_seed)
    splits = {name: SplitData(dataset, np.asarray(idx, dtype=np.int64), cache) for name, idx in parts.items()}
    if separate_valid:
        valid = open_dataset(data, dict(data.valid_options))
        task_columns(valid, tuple(names))
        valid_cache = open_or_build_cache(valid, pcfg, data, cache_root, workers)
        splits["valid"] = SplitData(valid, np.arange(len(valid)), valid_cache)
    if "valid" not in splits or len(splits["valid"].indices) == 0:
        raise ConfigError("data.split", "the recipe yields no validation images")
    return PreparedData(splits, names, columns, pcfg, data.channels, data.normalization)


def make_loader(prepared: PreparedData, split: str, cfg: ExperimentConfig, train: bool,
                shuffle_seed: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader over one split (training: augmented, shuffled per epoch)."""
    from cxrlab.data.torch import ImageDataset, default_train_augment
    from cxrlab.engine.callbacks import EpochShuffleSampler

    part = prepared.splits[split]
    augment = default_train_augment("classification", seed=cfg.seed) if (train and cfg.data.augment) else None
    ds = ImageDataset(part.dataset, prepared.preprocess, channels=prepared.channels,
                      normalization=prepared.normalization, augment=augment, cache=part.cache,
                      indices=part.indices)
    micro = cfg.data.micro_batch or cfg.data.batch_size
    sampler = EpochShuffleSampler(len(ds), shuffle_seed, shuffle=train and cfg.train.shuffle)
    workers = int(cfg.data.num_workers)
    return torch.utils.data.DataLoader(
        ds,
        batch_size=micro,
        sampler=sampler,
        num_workers=workers,
        drop_last=False,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def accumulation(cfg: ExperimentConfig) -> int:
    """Micro-batches per optimizer step so every run keeps the same effective batch."""
    micro = cfg.data.micro_batch or cfg.data.batch_size
    if micro <= 0 or cfg.data.batch_size % micro:
        raise ConfigError("data.micro_batch",
                          f"batch_size {cfg.data.batch_size} must be a multiple of micro_batch {micro}")
    return cfg.data.batch_size // micro
