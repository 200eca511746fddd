"""BraTS brain-tumour MRI in its three public layouts, behind one contract.

Layouts (auto-detected from the file names, or named):

* ``brats2020`` — BraTS 2018-2021: one folder per case, ``<id>_{t1,t1ce,t2,flair,seg}.nii.gz``;
  labels 1 = necrotic / non-enhancing core (NCR), 2 = peritumoral edema (ED), 4 = enhancing
  tumour (ET). Survival in ``survival_info.csv`` (2020: ``Brats20ID, Age, Survival_days,
  Extent_of_Resection``) or ``survival_data.csv`` (2018/2019: ``BraTS18ID, Age, Survival``
  [, ``ResectionStatus``]).
* ``brats2023`` — BraTS 2023+: ``<id>-{t1n,t1c,t2w,t2f,seg}.nii.gz``; labels 1 = NETC,
  2 = SNFH (edema), 3 = ET; 2024 adds 4 = resection cavity (RC), which is no tumour region.
* ``msd`` — Medical Segmentation Decathlon Task01_BrainTumour: ``imagesTr/BRATS_001.nii.gz``
  holds the four modalities in one 4-D file (FLAIR, T1w, T1gd, T2w) and
  ``labelsTr/BRATS_001.nii.gz`` uses 1 = edema, 2 = non-enhancing tumour, 3 = enhancing.

Whatever the layout, a loaded :class:`BratsCase` has the four channels in the order
:data:`MODALITIES` (T1, T1ce, T2, FLAIR) and a *canonical* label volume, 0 background,
1 NCR, 2 ED, 3 ET (:data:`CANONICAL`), from which the evaluation regions come: whole tumour
WT = NCR + ED + ET, tumour core TC = NCR + ET, enhancing tumour ET (:func:`region_masks`).
:func:`to_convention` maps a canonical prediction back to the input's label values.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.errors import (ConfigError, CSVFormatError, InputError, LabelValueError, MissingFileError, SkipLog,
                           VolumeMismatchError)
from cxrlab.io.nifti import NiftiVolume, is_nifti, nifti_stem, read_nifti

log = logging.getLogger(__name__)

MODALITIES = ("t1", "t1ce", "t2", "flair")
"""Channel order of every loaded case."""

LAYOUTS = ("brats2020", "brats2023", "msd")
FILE_SUFFIXES = {
    "brats2020": {"t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "flair": "_flair", "seg": "_seg"},
    "brats2023": {"t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "flair": "-t2f", "seg": "-seg"},
}
"""File name of each modality: ``<case id><suffix>.nii.gz``."""

MSD_CHANNELS = ("flair", "t1", "t1ce", "t2")
"""Channel order of the Decathlon's 4-D images (``dataset.json``: FLAIR, T1w, t1gd, T2w)."""

CANONICAL = {0: "background", 1: "NCR", 2: "ED", 3: "ET"}
REGIONS = ("WT", "TC", "ET")
REGION_CLASSES = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
"""Evaluation regions as sets of canonical classes."""

CONVENTIONS: dict[str, dict[int, int]] = {
    "2020": {0: 0, 1: 1, 2: 2, 4: 3},
    "2023": {0: 0, 1: 1, 2: 2, 3: 3, 4: 0},
    "msd": {0: 0, 1: 2, 2: 1, 3: 3},
}
"""Label value -> canonical class per convention (2024's resection cavity, 4, maps to background)."""

LAYOUT_CONVENTION = {"brats2020": "2020", "brats2023": "2023", "msd": "msd"}
SURVIVAL_FILES = ("survival_info.csv", "survival_data.csv")
ALIVE = re.compile(r"^\s*ALIVE\s*\(\s*(\d+(?:\.\d+)?)\s*days?\s+later\s*\)\s*$", re.IGNORECASE)


def to_canonical(label: np.ndarray, convention: str, source: str | Path | None = None,
                 case_id: str = "") -> np.ndarray:
    """Map a label volume of ``convention`` to canonical classes (uint8).

    Raises:
        LabelValueError: A value outside the convention (names the file and case).
    """
    table = CONVENTIONS[convention]
    values = np.unique(label)
    unknown = [int(v) for v in values if int(v) not in table]
    if unknown:
        raise LabelValueError(source, f"case {case_id}: label value(s) {unknown} are not in the BraTS {convention} "
                                      f"convention (allowed {sorted(table)})")
    lut = np.zeros(max(table) + 1, dtype=np.uint8)
    for value, cls in table.items():
        lut[value] = cls
    return lut[label.astype(np.int64)]


def to_convention(canonical: np.ndarray, convention: str) -> np.ndarray:
    """Map canonical classes (0-3) to the label values of ``convention`` (uint8)."""
    lut = np.zeros(4, dtype=np.uint8)
    for value, cls in CONVENTIONS[convention].items():
        if cls and not lut[cls]:
            lut[cls] = value
    return lut[np.asarray(canonical, dtype=np.int64)]


def region_masks(canonical: np.ndarray) -> dict[str, np.ndarray]:
    """``{"WT", "TC", "ET"} -> bool volume`` of a canonical label volume."""
    return {name: np.isin(canonical, classes) for name, classes in REGION_CLASSES.items()}


def detect_convention(values: set[int] | np.ndarray) -> str:
    """The BraTS convention (``2020`` or ``2023``) of a set of label values.

    4 without 3 is the 2018-2021 enhancing tumour; any 3 is 2023+ (the Decathlon's order
    cannot be told from values alone: name it). Only {0, 1, 2} reads the same in both.

    Raises:
        LabelValueError: Values outside both conventions.
    """
    present = {int(v) for v in np.asarray(list(values) if isinstance(values, set) else values).ravel()}
    unknown = sorted(present - {0, 1, 2, 3, 4})
    if unknown:
        raise LabelValueError(None, f"label value(s) {unknown} belong to no BraTS convention")
    return "2023" if 3 in present else "2020"


# ------------------------------------------------------------------------------ survival


@dataclass(frozen=True)
class SurvivalRow:
    """One row of a BraTS survival CSV.

    Attributes:
        case_id: The case (``Brats20ID`` / ``BraTS18ID`` column).
        age: Age in years.
        days: Overall survival in days; None when blank.
        censored: True for an ``ALIVE (N days later)`` cell (alive after ``days``).
        resection: ``GTR``, ``STR`` or None (blank / ``NA`` / not in the file).
    """

    case_id: str
    age: float
    days: float | None
    censored: bool = False
    resection: str | None = None


def parse_survival_cell(text: str) -> tuple[float | None, bool]:
    """``(days, censored)`` of one survival cell: a number, ``ALIVE (N days later)`` or blank.

    Raises:
        ValueError: Anything else.
    """
    text = str(text).strip()
    if text == "" or text.upper() in ("NA", "NAN"):
        return None, False
    match = ALIVE.match(text)
    if match:
        return float(match.group(1)), True
    days = float(text)
    if not np.isfinite(days) or days < 0:
        raise ValueError(text)
    return days, False


def read_survival_csv(path: str | Path, skips: SkipLog | None = None) -> dict[str, SurvivalRow]:
    """Read a BraTS 2018-2020 survival CSV.

    Columns: the id (a name ending in ``ID``), ``Age``, ``Survival_days`` or ``Survival``,
    and optionally ``Extent_of_Resection`` / ``ResectionStatus``.

    Raises:
        MissingFileError: No file.
        CSVFormatError: Unparsable, or a required column is missing.
        LabelValueError: An age or survival cell that is no number and no known ``ALIVE``
            pattern (file and line named), unless ``skips`` skips it (counted).
    """
    path = Path(path)
    skips = skips or SkipLog("raise")
    if not path.is_file():
        raise MissingFileError(path, "survival CSV not found")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise CSVFormatError(path, f"cannot parse as CSV: {err}") from err
    columns = {c.strip().lower(): c for c in table.columns}
    id_col = next((c for c in table.columns if c.strip().lower().endswith("id")), None)
    age_col = columns.get("age")
    surv_col = columns.get("survival_days") or columns.get("survival")
    resection_col = columns.get("extent_of_resection") or columns.get("resectionstatus")
    missing = [name for name, col in (("<...>ID", id_col), ("Age", age_col), ("Survival_days", surv_col)) if col is None]
    if missing:
        raise CSVFormatError(path, f"no column(s) {missing}; columns present: {list(table.columns)}")
    rows: dict[str, SurvivalRow] = {}
    for i, record in enumerate(table.to_dict("records")):
        where = f"{path}:{i + 2}"
        case_id = str(record[id_col]).strip()
        try:
            try:
                age = float(str(record[age_col]).strip())
            except ValueError:
                raise LabelValueError(where, f"case {case_id}: age {record[age_col]!r} is not a number") from None
            try:
                days, censored = parse_survival_cell(record[surv_col])
            except ValueError:
                raise LabelValueError(where, f"case {case_id}: survival {record[surv_col]!r} is neither a number of "
                                             "days nor 'ALIVE (N days later)'") from None
        except InputError as err:
            skips.handle(err)
            continue
        resection = str(record[resection_col]).strip().upper() if resection_col else ""
        rows[case_id] = SurvivalRow(case_id, age, days, censored, resection if resection in ("GTR", "STR") else None)
    return rows


# ------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class BratsCaseFiles:
    """Where one case's files are (not yet read).

    Attributes:
        case_id: The case.
        images: Modality -> file (``brats2020``/``brats2023``), or ``{"stack": 4-D file}`` (``msd``).
        seg: The label file, None when the case has none (validation/test data).
    """

    case_id: str
    images: dict[str, Path]
    seg: Path | None


@dataclass
class BratsCase:
    """One loaded case.

    Attributes:
        case_id: The case.
        image: ``(4, X, Y, Z)`` float32 in :data:`MODALITIES` order, the file's voxel grid.
        label: ``(X, Y, Z)`` canonical classes (uint8), None without a segmentation.
        affine: ``(4, 4)`` voxel -> millimetres (shared by every channel).
        spacing: Voxel size in millimetres.
        reference: The first image volume read (its header and affine for writing back).
        convention: Label convention of the source (``2020``, ``2023``, ``msd``).
        survival: The survival row, when the CSV has the case.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    spacing: tuple[float, float, float]
    reference: NiftiVolume
    convention: str
    survival: SurvivalRow | None = None
    files: BratsCaseFiles | None = field(default=None, repr=False)


def _find_file(folder: Path, stem: str) -> Path | None:
    for suffix in (".nii.gz", ".nii"):
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def detect_layout(root: Path) -> str:
    """``msd`` (an ``imagesTr`` folder), ``brats2020`` (``*_flair.nii[.gz]``) or ``brats2023`` (``*-t2f.nii[.gz]``).

    Raises:
        MissingFileError: The root is missing.
        ConfigError: No layout recognised.
    """
    if not root.is_dir():
        raise MissingFileError(root, "BraTS root folder not found")
    if (root / "imagesTr").is_dir() or (root / "imagesTs").is_dir():
        return "msd"
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in folder.iterdir():
            name = path.name.lower()
            if name.endswith(("_flair.nii.gz", "_flair.nii")):
                return "brats2020"
            if name.endswith(("-t2f.nii.gz", "-t2f.nii")):
                return "brats2023"
    raise ConfigError(str(root), "no BraTS layout found: expected case folders with <id>_flair.nii.gz "
                                 "(2018-2021) or <id>-t2f.nii.gz (2023+), or the Decathlon's imagesTr/")


class BratsDataset:
    """The cases of a BraTS download (or a SYNTHETIC phantom set) in any of :data:`LAYOUTS`.

    Listing checks that every modality file exists; :meth:`load` reads a case and checks
    shapes, affines and label values.

    Args:
        root: The folder holding the case folders (``MICCAI_BraTS2020_TrainingData``,
            ``ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData``) or the Decathlon's
            ``Task01_BrainTumour``.
        layout: ``auto`` or one of :data:`LAYOUTS`.
        labels: ``auto`` (the layout's convention) or ``2020`` / ``2023`` / ``msd``.
        survival_csv: Survival CSV; None looks for ``survival_info.csv`` /
            ``survival_data.csv`` in ``root``.
        on_error: ``raise`` or ``skip`` (cases with a missing modality, survival rows
            that cannot be parsed; see :attr:`skips`).
        split: ``train`` (``imagesTr``) or ``test`` (``imagesTs``), Decathlon only.
        only: Keep only these case ids (e.g. one case folder to predict).

    Raises:
        MissingFileError: The root, a modality file (``raise``) or a named survival CSV is missing.
        ConfigError: Unknown layout/convention, or no case found.
    """

    def __init__(self, root: str | Path, layout: str = "auto", labels: str = "auto",
                 survival_csv: str | Path | None = None, on_error: str = "raise", split: str = "train",
                 only: list[str] | None = None) -> None:
        self.root = Path(root)
        self.skips = SkipLog(on_error)
        self.layout = detect_layout(self.root) if layout == "auto" else layout
        if self.layout not in LAYOUTS:
            raise ConfigError("layout", f"unknown BraTS layout {layout!r}; choose from auto, {', '.join(LAYOUTS)}")
        self.labels = LAYOUT_CONVENTION[self.layout] if labels == "auto" else str(labels)
        if self.labels not in CONVENTIONS:
            raise ConfigError("labels", f"unknown label convention {labels!r}; choose from auto, "
                                        f"{', '.join(CONVENTIONS)}")
        if not self.root.is_dir():
            raise MissingFileError(self.root, "BraTS root folder not found")
        self.cases: list[BratsCaseFiles] = (self._list_msd(split) if self.layout == "msd" else self._list_folders())
        if only is not None:
            self.cases = [c for c in self.cases if c.case_id in set(only)]
        if not self.cases:
            raise ConfigError(str(self.root), f"no {self.layout} case found" + (f" among {only}" if only else ""))
        self.survival: dict[str, SurvivalRow] = {}
        csv = Path(survival_csv) if survival_csv else next(
            (self.root / name for name in SURVIVAL_FILES if (self.root / name).is_file()), None)
        if csv is not None:
            self.survival = read_survival_csv(csv, self.skips)
        self.survival_csv = csv
        self._index = {c.case_id: i for i, c in enumerate(self.cases)}

    def _list_folders(self) -> list[BratsCaseFiles]:
        suffixes = FILE_SUFFIXES[self.layout]
        cases = []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            case_id = folder.name
            if not any(is_nifti(p) for p in folder.iterdir()):
                continue
            images: dict[str, Path] = {}
            try:
                for modality in MODALITIES:
                    path = _find_file(folder, case_id + suffixes[modality])
                    if path is None:
                        raise MissingFileError(folder / f"{case_id}{suffixes[modality]}.nii.gz",
                                               f"case {case_id}: the {modality} volume is missing")
                    images[modality] = path
            except InputError as err:
                self.skips.handle(err)
                continue
            cases.append(BratsCaseFiles(case_id, images, _find_file(folder, case_id + suffixes["seg"])))
        return cases

    def _list_msd(self, split: str) -> list[BratsCaseFiles]:
        folder = self.root / ("imagesTr" if split == "train" else "imagesTs")
        if not folder.is_dir():
            raise MissingFileError(folder, "the Decathlon layout needs this folder")
        label_dir = self.root / "labelsTr"
        cases = []
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or not is_nifti(path):      # the tarball's ._ resource forks
                continue
            case_id = nifti_stem(path)
            seg = label_dir / path.name
            cases.append(BratsCaseFiles(case_id, {"stack": path}, seg if seg.is_file() else None))
        return cases

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self.cases]

    def files(self, case: str | int) -> BratsCaseFiles:
        """The files of a case (by id or index).

        Raises:
            KeyError: No such case.
        """
        return self.cases[case if isinstance(case, int) else self._index[case]]

    def load_label(self, case: str | int) -> np.ndarray | None:
        """Only the case's segmentation as canonical classes (None without one); no images decoded.

        Raises:
            ImageReadError: The file is corrupt or truncated.
            LabelValueError: A label value outside the convention.
        """
        files = self.files(case)
        if files.seg is None:
            return None
        seg = read_nifti(files.seg, dtype=np.int16)
        return to_canonical(seg.array, self.labels, seg.path, files.case_id)

    def load(self, case: str | int, with_label: bool = True) -> BratsCase:
        """Read one case: four co-registered channels, canonical labels, affine, survival.

        Raises:
            ImageReadError: A file is corrupt or truncated.
            VolumeMismatchError: Modalities (or the label) differ in shape or affine.
            LabelValueError: A label value outside the convention.
        """
        files = self.files(case)
        if "stack" in files.images:
            stack = read_nifti(files.images["stack"])
            if stack.array.ndim != 4 or stack.array.shape[3] != 4:
                raise VolumeMismatchError(stack.path, f"case {files.case_id}: expected a 4-D image with 4 "
                                                      f"modalities, got shape {stack.array.shape}")
            order = [MSD_CHANNELS.index(m) for m in MODALITIES]
            image = np.ascontiguousarray(np.moveaxis(stack.array, 3, 0)[order])
            reference = stack
        else:
            volumes = [read_nifti(files.images[m]) for m in MODALITIES]
            reference = volumes[0]
            for modality, volume in zip(MODALITIES[1:], volumes[1:]):
                _check_grid(files.case_id, reference, volume, modality)
            image = np.stack([v.array for v in volumes])
        label = None
        if with_label and files.seg is not None:
            seg = read_nifti(files.seg, dtype=np.int16)
            if seg.array.ndim == 4 and seg.array.shape[3] == 1:
                seg.array = seg.array[..., 0]
            _check_grid(files.case_id, reference, seg, "seg")
            label = to_canonical(seg.array, self.labels, seg.path, files.case_id)
        return BratsCase(files.case_id, image.astype(np.float32, copy=False), label, reference.affine,
                         reference.spacing, reference, self.labels, self.survival.get(files.case_id), files)


def _check_grid(case_id: str, reference: NiftiVolume, volume: NiftiVolume, what: str) -> None:
    if tuple(volume.array.shape[:3]) != tuple(reference.array.shape[:3]):
        raise VolumeMismatchError(volume.path, f"case {case_id}: {what} has shape {volume.array.shape[:3]}, "
                                               f"{reference.path.name} has {reference.array.shape[:3]}")
    if not np.allclose(volume.affine, reference.affine, atol=1e-3):
        raise VolumeMismatchError(volume.path, f"case {case_id}: {what}'s affine differs from "
                                               f"{reference.path.name}'s (not co-registered)")
