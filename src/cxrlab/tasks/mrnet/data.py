"""MRNet data: the exams of a recipe, the tune hold-out, per-plane landmarks, slice tensors."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxrlab.data.datasets.mrnet import TASKS, Exam, ExamDataset, open_exam_csv, open_mrnet
from cxrlab.data.volume_transforms import augment_series, learn_landmarks, standardize, to_slices
from cxrlab.errors import ConfigError
from cxrlab.tasks.mrnet.recipe import MRNetConfig
from cxrlab.utils import atomic_write_json

log = logging.getLogger(__name__)


def ensure_phantoms(cfg: MRNetConfig) -> MRNetConfig:
    """Write the recipe's SYNTHETIC phantoms when it has a ``phantoms`` section; point ``data.root`` at them."""
    if cfg.phantoms is None:
        return cfg
    from cxrlab.data.synthetic_knee import write_mrnet_phantoms

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
    order = np.random.default_rng(d.split_seed).permutation(len(train))
    n_tune = int(round(d.tune_fraction * len(train)))
    if n_tune < 1 or n_tune >= len(train):
        raise ConfigError("data.tune_fraction", f"{d.tune_fraction} of {len(train)} training exams leaves "
                                                "no tune or no train exams")
    tune_idx, train_idx = sorted(order[:n_tune]), sorted(order[n_tune:])
    return MRNetSplits(ExamDataset([train.exams[i] for i in train_idx], train.name + ":fit", train.skips),
                       ExamDataset([train.exams[i] for i in tune_idx], train.name + ":tune", train.skips),
                       valid)


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


def prepare(array: np.ndarray, landmarks: list[float], size: int, normalization: str) -> torch.Tensor:
    """One series -> ``(S, 3, size, size)``: standardize, resize, three channels, normalize."""
    return to_slices(standardize(array, np.asarray(landmarks)), size, normalization)


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
        x = prepare(volume.array, self.landmarks, self.size, self.normalization)
        if self.augment:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
            x = augment_series(x, torch.Generator().manual_seed(seed))
        return x, torch.tensor([self.labels[item]], dtype=torch.float32)


def one_exam(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate for ``batch_size=1``: the exam itself (slice counts differ between exams)."""
    return batch[0]
