"""Screening data: the main dataset and evaluation sets of a recipe, their stores and splits."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrlab.config.screening import ScreeningConfig
from cxrlab.data.datasets import load_dataset
from cxrlab.data.samplers import ShardedSampler
from cxrlab.data.screening import (
    ScreeningItems,
    ScreeningStore,
    abnormal_truth,
    screening_targets,
)
from cxrlab.data.splits import patient_split
from cxrlab.errors import ConfigError, SkipLog

log = logging.getLogger(__name__)


@dataclass
class EvalSet:
    """Rows of one evaluation set in its dataset/store."""

    name: str
    dataset: Any
    store: ScreeningStore
    rows: np.ndarray


@dataclass
class ScreeningData:
    """Everything training and evaluation read: the main dataset, its store and splits."""

    dataset: Any
    store: ScreeningStore
    targets: np.ndarray        # int64 [N, D]
    truth: np.ndarray          # float [N] abnormal reference
    parts: dict[str, np.ndarray]   # hard_train, weak_train, valid, test, unseen
    eval_sets: dict[str, EvalSet]


def _store_folder(cfg: ScreeningConfig, dataset: Any, name: str) -> Path:
    digest = hashlib.sha1("\n".join(dataset.table["path"].astype(str)).encode())
    digest.update(json.dumps([cfg.preprocess().to_dict(), list(cfg.data.diseases)]).encode())
    root = Path(cfg.data.cache) if cfg.data.cache else Path(cfg.output.root) / "cache"
    return root / f"screening-{name}-{digest.hexdigest()[:12]}-{cfg.data.size}"


def _open(cfg: ScreeningConfig, spec: Mapping[str, Any], name: str, skips: SkipLog
          ) -> tuple[Any, ScreeningStore]:

    dataset = load_dataset(spec["dataset"], on_error=cfg.data.on_error, **dict(spec["options"]))
    store = ScreeningStore.build(dataset, cfg.preprocess(), list(cfg.data.diseases),
                                 _store_folder(cfg, dataset, name), skips=skips,
                                 workers=max(1, cfg.data.num_workers))
    return dataset, store


def unseen_rows(dataset: Any, unseen: tuple[str, ...]) -> np.ndarray:
    """Rows positive for any held-out (unseen) class present in ``dataset``."""
    cols = [dataset.pathologies.index(u) for u in unseen if u in dataset.pathologies]
    if not cols:
        return np.zeros(len(dataset), dtype=bool)
    return (np.nan_to_num(dataset.labels[:, cols], nan=0.0) == 1).any(axis=1)


def prepare_screening_data(cfg: ScreeningConfig, skips: SkipLog | None = None) -> ScreeningData:
    """Open the recipe's datasets, split them and build (or reuse) their stores."""
    skips = skips or SkipLog(cfg.data.on_error)
    dataset, store = _open(cfg, {"dataset": cfg.data.dataset, "options": cfg.data.options},
                           "main", skips)
    missing = [n for n in (*cfg.data.diseases, *cfg.data.unseen) if n not in dataset.pathologies]
    if missing:
        raise ConfigError("data.diseases", f"{missing} not among {dataset.name}'s classes "
                                           f"{dataset.pathologies}")
    targets = screening_targets(dataset.labels, dataset.pathologies, cfg.data.diseases,
                                cfg.model.num_classes)
    truth = abnormal_truth(dataset.labels)
    table = dataset.table
    n = len(dataset)
    weak = table["weak"].to_numpy(dtype=bool) if "weak" in table.columns else np.zeros(n, bool)
    held_out = unseen_rows(dataset, cfg.data.unseen)
    usable = ~held_out & ~np.isin(np.arange(n), store.skipped)
    split = np.array([""] * n, dtype=object)
    if "split" in table.columns and (table["split"] != "").any():
        split[:] = table["split"].to_numpy()
    else:
        hard = np.flatnonzero(usable & ~weak)
        fractions = {k: float(v) for k, v in cfg.data.split.items() if float(v) > 0}
        parts = patient_split(table["patient_id"].to_numpy()[hard].astype(str),
                              fractions=fractions, seed=cfg.data.split_seed)
        for part, idx in parts.items():
            split[hard[np.asarray(idx, dtype=np.int64)]] = part
    split[weak] = "train"
    parts = {
        "hard_train": np.flatnonzero(usable & ~weak & (split == "train")),
        "weak_train": np.flatnonzero(usable & weak & (split == "train")),
        "valid": np.flatnonzero(usable & ~weak & (split == "valid")),
        "test": np.flatnonzero(usable & ~weak & (split == "test")),
        "unseen": np.flatnonzero(held_out & ~np.isin(np.arange(n), store.skipped)),
    }
    for part in ("hard_train", "valid"):
        if parts[part].size == 0:
            raise ConfigError("data.split", f"the recipe yields no {part} images")
    valid_truth = truth[parts["valid"]]
    if not (np.nansum(valid_truth == 1) and np.nansum(valid_truth == 0)):
        raise ConfigError("data.split", "the validation split needs normal and abnormal images "
                                        "to choose the operating point")
    eval_sets = {"internal": EvalSet("internal", dataset, store, parts["test"])}
    if parts["unseen"].size:
        eval_sets["unseen"] = EvalSet("unseen", dataset, store, parts["unseen"])
    for name, spec in cfg.data.eval_sets.items():
        if not isinstance(spec, Mapping) or "dataset" not in spec:
            raise ConfigError(f"data.eval_sets.{name}", "needs 'dataset' and 'options'")
        other, other_store = _open(cfg, {"dataset": spec["dataset"],
                                         "options": spec.get("options", {})}, name, skips)
        rows = np.flatnonzero(~np.isin(np.arange(len(other)), other_store.skipped))
        eval_sets[name] = EvalSet(name, other, other_store, rows)
    return ScreeningData(dataset, store, targets, truth, parts, eval_sets)


def _loader(items: ScreeningItems, batch_size: int, shuffle: bool, seed: int, workers: int,
            shard: bool = False):
    """A loader over ``items``; ``shard``: a DDP training loop's loader, each rank reading its
    slice of the same seeded order (one process: the plain loader, unchanged)."""
    import torch


    generator = torch.Generator().manual_seed(seed)
    if shard:
        order = (torch.utils.data.RandomSampler(items, generator=generator) if shuffle
                 else torch.utils.data.SequentialSampler(items))
        return torch.utils.data.DataLoader(items, batch_size=batch_size, sampler=ShardedSampler(order),
                                           num_workers=workers, persistent_workers=workers > 0)
    return torch.utils.data.DataLoader(items, batch_size=batch_size, shuffle=shuffle,
                                       generator=generator, num_workers=workers,
                                       persistent_workers=workers > 0)
