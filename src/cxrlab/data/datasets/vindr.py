"""VinDr-CXR as shipped on Kaggle (VinBigData): ``train.csv`` with one row per box.

Columns ``image_id, class_name, class_id, rad_id, x_min, y_min, x_max, y_max``: each of
several radiologists (``rad_id``) gave every finding a box, in the pixel coordinates of
the original DICOM, or one ``No finding`` row without coordinates.
torchxrayvision ships this file as ``vinbigdata-train.csv.gz``. Images are
``<root>/train/<image_id>.dicom`` (``.dcm`` and ``.png`` are accepted too).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.data.datasets.base import (PolicyArg, XrayDataset, boxes_mask, grouped_digests, image_shape,
                                       read_csv_table, report_bad_rows)
from cxrlab.errors import CSVFormatError, LabelValueError, MissingFileError, SkipLog

#: The 14 findings (``class_id`` 0-13); ``No finding`` (14) is not a class.
VINDR_PATHOLOGIES = [
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation",
    "ILD", "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion",
    "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis",
]
NO_FINDING = "No finding"
IMAGE_SUFFIXES = (".dicom", ".dcm", ".png")
_BOX = ["x_min", "y_min", "x_max", "y_max"]


def _image_index(root: Path) -> dict[str, str]:
    """Image id -> file in ``root/train`` or ``root`` (first suffix of IMAGE_SUFFIXES wins)."""
    found: dict[str, tuple[int, str]] = {}
    for folder in (root / "train", root):
        if not folder.is_dir():
            continue
        with os.scandir(folder) as entries:
            for entry in entries:
                stem, suffix = os.path.splitext(entry.name)
                if suffix.lower() in IMAGE_SUFFIXES and stem not in found:
                    found[stem] = (IMAGE_SUFFIXES.index(suffix.lower()), entry.path)
    return {stem: path for stem, (_, path) in found.items()}


class VindrDataset(XrayDataset):
    """VinDr-CXR image labels and boxes.

    A finding is positive (1) on an image if **any** radiologist marked it, negative (0)
    otherwise; every image was read completely, so there are no blank or uncertain
    labels (the column ``n_readers`` counts the radiologists, :attr:`boxes` keeps every
    reader's boxes). VinDr has no patient ids: ``patient_id`` and ``study_id`` are the
    image id. ``view`` is blank and ``frontal`` true (the set holds frontal adult
    radiographs).

    Args:
        csv: Kaggle ``train.csv`` (plain or gzip).
        root: Folder holding ``train/`` (or the images). Default: the CSV's folder.
        policy: Label policy.
        on_error: ``"raise"`` or ``"skip"`` rows with an unknown class or a malformed box
            (the image keeps its other rows) and images without a file.
        check_files: Verify that every image exists.

    Raises:
        MissingFileError: The CSV, or (``check_files``) an image, is missing.
        CSVFormatError: A required column is missing or a box is not four numbers with
            ``x_min <= x_max`` and ``y_min <= y_max``.
        LabelValueError: ``class_name`` is not a VinDr class.
    """

    name = "vindr"

    def __init__(self, csv: str | Path, root: str | Path | None = None, *,
                 policy: PolicyArg = None, on_error: str = "raise",
                 check_files: bool = True) -> None:
        skips = SkipLog(on_error)
        table = read_csv_table(csv, ["image_id", "class_name", "rad_id", *_BOX])
        names = table["class_name"].str.strip()
        known = names.isin([*VINDR_PATHOLOGIES, NO_FINDING]).to_numpy()
        keep = report_bad_rows(~known, lambda row: LabelValueError(
            f"{csv}:{row + 2}", f"column 'class_name' holds {names.iat[row]!r}; expected one "
                                f"of {', '.join(VINDR_PATHOLOGIES)} or {NO_FINDING!r}"), skips)
        cells = table[_BOX].apply(lambda c: c.str.strip())
        coords = cells.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        blank = (cells == "").to_numpy()
        has_box = np.isfinite(coords).all(axis=1)
        bad_box = (~(np.isfinite(coords) | blank).all(axis=1)
                   | (blank.any(axis=1) & ~blank.all(axis=1))
                   | (has_box & ((coords[:, 2] < coords[:, 0]) | (coords[:, 3] < coords[:, 1]))))
        keep &= report_bad_rows(bad_box & keep, lambda row: CSVFormatError(
            f"{csv}:{row + 2}", f"box {cells.iloc[row].tolist()} is not blank nor four numbers "
                                f"with x_min <= x_max and y_min <= y_max"), skips)

        image_ids = table["image_id"].str.strip()
        codes, uniques = pd.factorize(image_ids[keep], sort=False)
        ids = [str(u) for u in uniques]
        kept_names = names[keep].to_numpy()
        raw = np.zeros((len(ids), len(VINDR_PATHOLOGIES)), dtype=np.float32)
        column = {name: k for k, name in enumerate(VINDR_PATHOLOGIES)}
        finding = kept_names != NO_FINDING
        class_cols = np.array([column[n] for n in kept_names[finding]], dtype=np.int64)
        raw[codes[finding], class_cols] = 1.0
        readers = (pd.Series(table["rad_id"].str.strip()[keep].to_numpy())
                   .groupby(codes).nunique().reindex(range(len(ids)), fill_value=0))

        boxed = keep & has_box & (names != NO_FINDING).to_numpy()
        self.boxes: pd.DataFrame = pd.DataFrame({
            "image_id": image_ids[boxed].to_numpy(), "label": names[boxed].to_numpy(),
            "rad_id": table["rad_id"].str.strip()[boxed].to_numpy(),
            **{axis: coords[boxed, k] for k, axis in enumerate(_BOX)}})

        base = (Path(root) if root is not None else Path(csv).parent).resolve()
        located = _image_index(base)
        default_dir = str(base / "train") + "/"
        paths = [located.get(i, f"{default_dir}{i}.dicom") for i in ids]
        present = np.ones(len(ids), dtype=bool)
        if check_files:
            first_line = pd.Series(np.flatnonzero(keep)).groupby(codes).min().to_numpy() + 2
            present = report_bad_rows(np.array([i not in located for i in ids], dtype=bool),
                                      lambda k: MissingFileError(
                                          f"{csv}:{first_line[k]}",
                                          f"image {ids[k]} has no file {ids[k]}.dicom/.dcm/.png "
                                          f"in {base / 'train'} or {base}"), skips)
        out = pd.DataFrame({"path": paths, "patient_id": ids, "study_id": ids, "view": "",
                            "frontal": True, "image_id": ids,
                            "n_readers": readers.to_numpy(dtype=np.int64)})
        self.root = str(base)
        self._setup(out[present], raw[present], VINDR_PATHOLOGIES, policy, skips, csv)

    def has_masks(self) -> bool:
        return True

    def mask_records(self) -> list[str]:
        """A digest of each image's boxes, every reader's (see
        :meth:`XrayDataset.mask_records`)."""
        return grouped_digests(self.table["image_id"].tolist(), self.boxes, "image_id")

    def boxes_for(self, i: int, pathology: str | None = None) -> pd.DataFrame:
        """Every reader's boxes on image ``i`` (of ``pathology`` if given)."""
        if pathology is not None:
            self.pathology_index(pathology)
        found = self.boxes[self.boxes["image_id"] == self.table.at[self._row(i), "image_id"]]
        if pathology is not None:
            found = found[found["label"] == pathology]
        return found.reset_index(drop=True)

    def mask(self, i: int, pathology: str | None = None) -> np.ndarray:
        """Union of all readers' boxes of image ``i`` (of ``pathology``, or of every
        finding), bool with the image's size (read from its header, so the file must
        exist and be at the original resolution). Empty when no reader drew a box."""
        found = self.boxes_for(i, pathology)
        shape = image_shape(self.table.at[self._row(i), "path"])
        return boxes_mask(shape, *(found[a].to_numpy() for a in _BOX))
