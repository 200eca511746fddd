"""MRNet data: the exams of a recipe, the tune hold-out, per-plane landmarks, slice tensors."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxrlab.config.mrnet import MRNetConfig
from cxrlab.data.datasets.mrnet import (
    TASKS,
    Exam,
    ExamDataset,
    open_exam_csv,
    open_mrnet,
)
from cxrlab.data.synthetic_knee import write_mrnet_phantoms
from cxrlab.data.volume_transforms import augment_series, learn_landmarks
from cxrlab.errors import ConfigError
from cxrlab.inference.mrnet import prepare_series
from cxrlab.utils import atomic_write_json

log = logging.getLogger(__name__)


def ensure_phantoms(cfg: MRNetConfig) -> MRNetConfig:
    """Write the recipe's SYNTHETIC phantoms when it has a ``phantoms`` section; point ``data.root`` at them."""
    if cfg.phantoms is None:
        return cfg

    p = cfg.phantoms
    out = Path(p.out) if p.out else Path(cfg.output.root) / "phantoms" / "MRNet-v1.0"
    if not (out / "train-abnormal.csv").is_file():
        write_mrnet_phantoms(out, p.n_train, p.n_valid, grid=p.grid, seed=p.seed, slices=tuple(p.slices),
                             prevalence=dict(p.prevalence), overwrite=True)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(out.resolve())))


@dataclass
class MRNetSplits:
    """``train`` (fits the networks and the logistic regressions), ``tune`` (picks checkpoints),
    ``valid`` (held out: reported only)."""

    train: ExamDataset
    tune: ExamDataset
    valid: ExamDataset

    def items(self) -> list[tuple[str, ExamDataset]]:
        return [("train", self.train), ("tune", self.tune), ("valid", self.valid)]


def open_splits(cfg: MRNetConfig) -> MRNetSplits:
    """The recipe's exams, with ``data.tune_fraction`` of the training exams held out (seeded).

    Raises:
        ConfigError: No source, or the hold-out leaves a part empty.
    """
    d = cfg.data
    if d.root is not None:
        train = open_mrnet(d.root, "train", on_error=d.on_error)
        valid = open_mrnet(d.root, "valid", on_error=d.on_error)
    elif d.train_csv is not None and d.valid_csv is not None:
        train = open_exam_csv(d.train_csv, on_error=d.on_error)
        valid = open_exam_csv(d.valid_csv, on_error=d.on_error)
    else:
        raise ConfigError("data", "set data.root (MRNet-v1.0) or both data.train_csv and data.valid_csv")
    tune_idx, train_idx = stratified_tune_split(train.labels, d.tune_fraction, d.split_seed)
    return MRNetSplits(ExamDataset([train.exams[i] for i in train_idx], train.name + ":fit", train.skips),
                       ExamDataset([train.exams[i] for i in tune_idx], train.name + ":tune", train.skips),
                       valid)


def stratified_tune_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Hold out about ``fraction`` of the exams so that every task's tune part holds both classes.

    The exams are grouped by their label combination (abnormal, ACL, meniscus; NaN = unknown)
    and each group gives its rounded share (seeded); then, for every task whose tune part
    still lacks a class that the training exams have, one exam of that class moves from the
    fit part to the tune part (only when the fit part keeps at least one of it).

    Args:
        labels: ``(exams, tasks)`` with 0, 1 or NaN.
        fraction: Share of exams held out, in (0, 1).
        seed: Seed of the draw.

    Returns:
        ``(tune indices, fit indices)``, sorted.

    Raises:
        ConfigError: The hold-out leaves no tune or no fit exams, or a task cannot have both
            classes in its tune part while keeping both in its fit part (a class with fewer than
            two exams).
    """
    labels = np.asarray(labels, dtype=float)
    rng = np.random.default_rng(seed)
    n_tune = int(round(fraction * len(labels)))
    if n_tune < 1 or n_tune >= len(labels):
        raise ConfigError("data.tune_fraction", f"{fraction} of {len(labels)} training exams leaves "
                                                "no tune or no train exams")
    keys = [tuple(np.nan_to_num(row, nan=-1.0).tolist()) for row in labels]
    tune: set[int] = set()
    for key in sorted(set(keys)):
        members = rng.permutation([i for i, k in enumerate(keys) if k == key]).tolist()
        tune.update(members[:int(round(fraction * len(members)))])
    for k, task in enumerate(TASKS[:labels.shape[1]]):
        for value in (0.0, 1.0):
            have = [i for i in sorted(tune) if labels[i, k] == value]
            spare = [i for i in rng.permutation(len(labels)).tolist()
                     if i not in tune and labels[i, k] == value]
            if have or not spare:
                continue
            if len(spare) < 2:
                raise ConfigError("data.tune_fraction", f"the training exams hold {len(spare)} exam(s) with "
                                                        f"{task}={int(value)}: too few for both the tune and "
                                                        "the fit part")
            tune.add(spare[0])
    if len(tune) >= len(labels):
        raise ConfigError("data.tune_fraction", f"{fraction} of {len(labels)} training exams leaves no train exams")
    fit = sorted(set(range(len(labels))) - tune)
    return sorted(tune), fit


def write_split(run_dir: Path, splits: MRNetSplits) -> None:
    summary = {}
    for name, ds in splits.items():
        labels = ds.labels
        summary[name] = {"exams": len(ds), "ids": ds.ids,
                         **{task: int(np.nansum(labels[:, k] == 1)) for k, task in enumerate(TASKS)},
                         "skipped": ds.skips.count}
    atomic_write_json(run_dir / "split.json", summary)


def fit_landmarks(train: ExamDataset, planes: tuple[str, ...]) -> dict[str, list[float]]:
    """Histogram landmarks per plane from the training exams."""
    out = {}
    for plane in planes:
        out[plane] = learn_landmarks(train.volumes(i, (plane,))[plane].array
                                     for i in range(len(train))).tolist()
    return out


class PlaneDataset(torch.utils.data.Dataset):
    """Items ``(slices (S, 3, size, size), label (1,))`` of one plane and task.

    Augmented series are moved by a generator seeded from torch's global RNG, which
    :class:`~cxrlab.engine.callbacks.EpochSeed` re-seeds every epoch (repeatable runs).
    """

    def __init__(self, exams: ExamDataset, plane: str, task: str, landmarks: list[float], size: int,
                 normalization: str, augment: bool = False) -> None:
        self.exams = exams
        self.plane = plane
        self.task_index = TASKS.index(task)
        self.landmarks = landmarks
        self.size = size
        self.normalization = normalization
        self.augment = augment
        labels = exams.labels[:, self.task_index]
        keep = ~np.isnan(labels)
        if not keep.all():
            log.warning("%s: %d exam(s) without a %s label left out", exams.name, int((~keep).sum()), task)
        self.indices = np.flatnonzero(keep)
        self.labels = labels[keep]

    def __len__(self) -> int:
        return len(self.indices)

    def exam(self, item: int) -> Exam:
        return self.exams.exams[int(self.indices[item])]

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        volume = self.exams.volumes(int(self.indices[item]), (self.plane,))[self.plane]
        x = prepare_series(volume.array, self.landmarks, self.size, self.normalization)
        if self.augment:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
            x = augment_series(x, torch.Generator().manual_seed(seed))
        return x, torch.tensor([self.labels[item]], dtype=torch.float32)


def one_exam(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate for ``batch_size=1``: the exam itself (slice counts differ between exams)."""
    return batch[0]
