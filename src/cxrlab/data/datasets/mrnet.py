"""Knee MRI exams: the MRNet-v1.0 layout and a generic CSV of exams, behind one contract.

Contract (:class:`ExamDataset`): ``exams``, a list of :class:`Exam` (exam id, one path per
plane, the three labels ``abnormal``/``acl``/``meniscus`` with NaN for unknown), ``labels``
as an ``(exams, 3)`` float array, :meth:`ExamDataset.volumes` to read an exam's planes, and
``skips``, the :class:`~cxrlab.errors.SkipLog` of exams left out with ``on_error="skip"``.

MRNet-v1.0 (Bien et al. 2018; Stanford ML Group's release)::

    MRNet-v1.0/train/{axial,coronal,sagittal}/0000.npy ... 1129.npy
    MRNet-v1.0/valid/{axial,coronal,sagittal}/1130.npy ... 1249.npy
    MRNet-v1.0/{train,valid}-{abnormal,acl,meniscus}.csv     no header, rows "0000,1"

Each ``.npy`` is a uint8 ``(slices, 256, 256)`` array; the slice count differs per exam and
plane. The test set was never released.

Generic CSV (a hospital's own knees): a header with ``id``, one path column per plane
(``axial``, ``coronal``, ``sagittal``: an ``.npy``, a NIfTI file or a DICOM series folder;
relative paths resolve against the CSV's folder) and any of the label columns (``0``, ``1``
or blank for unknown).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxrlab.data.datasets.base import read_csv_table
from cxrlab.errors import (
    CSVFormatError,
    ExamError,
    InputError,
    LabelValueError,
    MissingFileError,
    SkipLog,
    VolumeError,
)
from cxrlab.io.volume import PLANES, Volume, read_dicom_exam, read_npy, read_volume

log = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("abnormal", "acl", "meniscus")
SPLITS: tuple[str, ...] = ("train", "valid")
MRNET_DIR = "MRNet-v1.0"
_ID = re.compile(r"^\d{4}$")


@dataclass(frozen=True)
class Exam:
    """One knee exam.

    Attributes:
        exam_id: MRNet's zero-padded id (``"0000"``) or the CSV's ``id``.
        paths: plane -> the file or folder holding that plane's series.
        labels: task -> 0.0, 1.0 or NaN (unknown).
        slices: plane -> slice count, when known without reading pixels (MRNet ``.npy``).
    """

    exam_id: str
    paths: dict[str, Path]
    labels: dict[str, float]
    slices: dict[str, int] = field(default_factory=dict)


class ExamDataset:
    """A list of exams with labels (the contract of the module docstring).

    Args:
        exams: The exams.
        name: Where they come from (``mrnet:train``, a CSV path), used in messages.
        skips: Exams skipped while opening.
    """

    def __init__(self, exams: list[Exam], name: str, skips: SkipLog | None = None) -> None:
        self.exams = exams
        self.name = name
        self.skips = skips or SkipLog("raise")

    def __len__(self) -> int:
        return len(self.exams)

    @property
    def ids(self) -> list[str]:
        return [e.exam_id for e in self.exams]

    @property
    def labels(self) -> np.ndarray:
        """``(exams, 3)`` float32 in :data:`TASKS` order; NaN = unknown."""
        return np.array([[e.labels.get(t, math.nan) for t in TASKS] for e in self.exams], dtype=np.float32)

    def volumes(self, index: int, planes: tuple[str, ...] = PLANES) -> dict[str, Volume]:
        """Read the planes of exam ``index``.

        Raises:
            ExamError, VolumeError, ImageReadError: Naming the exam and plane.
        """
        exam = self.exams[index]
        out = {}
        for plane in planes:
            try:
                volume = read_volume(exam.paths[plane], plane=plane)
            except InputError as err:
                raise type(err)(err.source, f"exam {exam.exam_id}, {plane}: {err.problem}") from err
            out[plane] = volume
        return out


def mrnet_root(root: str | Path) -> Path:
    """The ``MRNet-v1.0`` folder: ``root`` itself or its child of that name.

    Raises:
        MissingFileError: Neither holds ``train-abnormal.csv``.
    """
    root = Path(root)
    for candidate in (root, root / MRNET_DIR):
        if (candidate / "train-abnormal.csv").is_file() or (candidate / "valid-abnormal.csv").is_file():
            return candidate
    raise MissingFileError(root, f"not an MRNet-v1.0 folder: no train-abnormal.csv here or in {MRNET_DIR}/")


def _read_label_csv(path: Path) -> dict[str, float]:
    """One MRNet label file: no header, rows ``NNNN,0|1``."""
    table = read_csv_table(path, header=None)
    if table.shape[1] != 2:
        raise CSVFormatError(path, f"expected 2 columns (id,label) without header, found {table.shape[1]}")
    out: dict[str, float] = {}
    for row, (exam_id, value) in enumerate(zip(table[0], table[1]), start=1):
        exam_id, value = str(exam_id).strip(), str(value).strip()
        if not _ID.match(exam_id):
            raise CSVFormatError(f"{path}:{row}", f"exam id {exam_id!r} is not a 4-digit zero-padded number")
        if value not in ("0", "1"):
            raise LabelValueError(f"{path}:{row}", f"label {value!r} for exam {exam_id}; expected 0 or 1")
        if exam_id in out:
            raise CSVFormatError(f"{path}:{row}", f"exam {exam_id} appears twice")
        out[exam_id] = float(value)
    return out


def _slice_count(path: Path, exam_id: str, plane: str, expected: tuple[int, int] | None) -> tuple[int, tuple[int, int]]:
    """Slice count and slice shape of an ``.npy`` from its header only (memory-mapped)."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise VolumeError(path, f"exam {exam_id}, {plane}: not a readable .npy array ({err})") from err
    if array.ndim != 3 or min(array.shape) == 0:
        raise VolumeError(path, f"exam {exam_id}, {plane}: array has shape {tuple(array.shape)}; "
                                "expected (slices, height, width)")
    shape = (int(array.shape[1]), int(array.shape[2]))
    if expected is not None and shape != expected:
        raise VolumeError(path, f"exam {exam_id}, {plane}: slices are {shape[0]} x {shape[1]}, expected "
                                f"{expected[0]} x {expected[1]}")
    return int(array.shape[0]), shape


def open_mrnet(root: str | Path, split: str, *, on_error: str = "raise",
               slice_size: tuple[int, int] | None = None) -> ExamDataset:
    """Open one split of an MRNet-v1.0 folder.

    Every exam of the label files must have an array in each of the three planes with
    ``(slices, H, W)`` shape (``H x W`` = ``slice_size`` when given, else the first exam's);
    the headers are checked here (memory-mapped, no pixels read).

    Args:
        root: ``MRNet-v1.0`` or its parent.
        split: ``train`` or ``valid``.
        on_error: ``raise`` or ``skip`` (skipped exams are counted in ``skips``).

    Raises:
        MissingFileError: No such folder or label file.
        CSVFormatError, LabelValueError: A bad label row (always raised: the file is wrong).
        ExamError: A label row without an array, the three label files disagree on the exams.
        VolumeError: An array that is not (slices, H, W) or of another slice size.
    """
    if split not in SPLITS:
        raise ExamError(None, f"unknown MRNet split {split!r}; choose from {SPLITS}")
    base = mrnet_root(root)
    labels = {task: _read_label_csv(base / f"{split}-{task}.csv") for task in TASKS}
    ids = list(labels["abnormal"])
    for task in TASKS[1:]:
        if set(labels[task]) != set(ids):
            extra = sorted(set(labels[task]) ^ set(ids))[:5]
            raise ExamError(base / f"{split}-{task}.csv", f"exams differ from {split}-abnormal.csv (e.g. {extra})")
    skips = SkipLog(on_error)
    exams: list[Exam] = []
    expected = slice_size
    for exam_id in ids:
        try:
            paths, slices = {}, {}
            for plane in PLANES:
                path = base / split / plane / f"{exam_id}.npy"
                if not path.is_file():
                    raise ExamError(path, f"exam {exam_id} has a label row but no {plane} array")
                slices[plane], shape = _slice_count(path, exam_id, plane, expected)
                expected = expected or shape
                paths[plane] = path
        except InputError as err:
            skips.handle(err)
            continue
        exams.append(Exam(exam_id, paths, {task: labels[task][exam_id] for task in TASKS}, slices))
    if skips.count:
        log.warning("MRNet %s: %s", split, skips.summary())
    unlabelled = _unlabelled(base / split, set(ids))
    if unlabelled:
        log.warning("MRNet %s: %d exam(s) with arrays but no label row were left out (e.g. %s)",
                    split, len(unlabelled), unlabelled[:3])
    return ExamDataset(exams, f"mrnet:{split}", skips)


def _unlabelled(folder: Path, ids: set[str]) -> list[str]:
    found = set()
    for plane in PLANES:
        if (folder / plane).is_dir():
            found |= {p.stem for p in (folder / plane).glob("*.npy")}
    return sorted(found - ids)


def open_exam_csv(csv: str | Path, *, on_error: str = "raise") -> ExamDataset:
    """Open a generic exam CSV (module docstring); paths are checked to exist.

    Raises:
        CSVFormatError: No ``id`` column or no plane column, duplicate ids.
        LabelValueError: A label cell other than 0, 1 or blank.
        ExamError: A missing plane path (or skipped with ``on_error="skip"``).
    """
    csv = Path(csv)
    table = read_csv_table(csv, required=("id",))
    planes = [p for p in PLANES if p in table.columns]
    if not planes:
        raise CSVFormatError(csv, f"no plane column; expected some of {PLANES}")
    skips = SkipLog(on_error)
    exams, seen = [], set()
    for row, record in enumerate(table.to_dict("records"), start=2):
        where = f"{csv}:{row}"
        exam_id = str(record["id"]).strip()
        if not exam_id or exam_id in seen:
            raise CSVFormatError(where, f"exam id {exam_id!r} is blank or repeated")
        seen.add(exam_id)
        labels = {}
        for task in TASKS:
            value = str(record.get(task, "")).strip()
            if value not in ("", "0", "1", "0.0", "1.0"):
                raise LabelValueError(where, f"{task} = {value!r}; expected 0, 1 or blank")
            labels[task] = math.nan if value == "" else float(value)
        try:
            paths = {}
            for plane in planes:
                text = str(record[plane]).strip()
                if not text:
                    raise ExamError(where, f"exam {exam_id} has no {plane} path")
                path = Path(text) if Path(text).is_absolute() else csv.parent / text
                if not path.exists():
                    raise ExamError(where, f"exam {exam_id}, {plane}: {path} does not exist")
                paths[plane] = path
        except InputError as err:
            skips.handle(err)
            continue
        exams.append(Exam(exam_id, paths, labels))
    if skips.count:
        log.warning("%s: %s", csv, skips.summary())
    return ExamDataset(exams, str(csv), skips)


def mrnet_stats(root: str | Path, *, on_error: str = "raise") -> dict[str, dict]:
    """Per split: exams, positives per task, and per plane the min and max slice count.

    Returns:
        ``{"train": {"exams": int, "abnormal": int, "acl": int, "meniscus": int,
        "slices": {"axial": [min, max], "coronal": [...], "sagittal": [...]}}, "valid": {...}}``
        (``"skipped": int`` is added to a split when ``on_error="skip"`` left exams out);
        a split without label files is omitted.
    """
    base = mrnet_root(root)
    out: dict[str, dict] = {}
    for split in SPLITS:
        if not (base / f"{split}-abnormal.csv").is_file():
            continue
        ds = open_mrnet(base, split, on_error=on_error)
        labels = ds.labels
        block: dict = {"exams": len(ds)}
        for k, task in enumerate(TASKS):
            block[task] = int(np.nansum(labels[:, k] == 1)) if len(ds) else 0
        block["slices"] = {plane: ([min(e.slices[plane] for e in ds.exams), max(e.slices[plane] for e in ds.exams)]
                                   if len(ds) else [0, 0]) for plane in PLANES}
        if ds.skips.count:
            block["skipped"] = ds.skips.count
        out[split] = block
    return out


def read_exam(path: str | Path, root: str | Path | None = None) -> tuple[str, dict[str, Volume]]:
    """An exam given on a command line: an MRNet id under ``root``, or a folder of three DICOM series.

    Returns:
        ``(exam_id, plane -> volume)``.

    Raises:
        ExamError: An id without ``root``, or an id found in no split.
    """
    text = str(path)
    if _ID.match(text):
        if root is None:
            raise ExamError(text, "an MRNet exam id needs --root (the MRNet-v1.0 folder)")
        base = mrnet_root(root)
        for split in SPLITS:
            paths = {p: base / split / p / f"{text}.npy" for p in PLANES}
            if all(p.is_file() for p in paths.values()):
                return text, {p: read_npy(paths[p], p) for p in PLANES}
        raise ExamError(base, f"exam {text} has no arrays in all three planes of train/ or valid/")
    folder = Path(path)
    return folder.name, read_dicom_exam(folder)
