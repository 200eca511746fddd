"""SIIM-ACR pneumothorax: DICOMs plus Kaggle ``train-rle.csv``.

The CSV header is ``ImageId, EncodedPixels`` (with a space); ``ImageId`` is the DICOM's
SOPInstanceUID and file stem; one row per annotated region (several rows for one image
are unioned), ``-1`` for an image without pneumothorax. DICOMs are found anywhere under
``root`` (``*.dcm``, searched recursively: the Kaggle layout nests them as
``<study>/<series>/<sop>.dcm``).
"""

from __future__ import annotations

import hashlib

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.data.datasets.base import PolicyArg, XrayDataset, is_frontal_view, report_bad_rows
from cxrlab.errors import CSVFormatError, ImageReadError, MissingFileError, SkipLog

SIIM_PATHOLOGIES = ["Pneumothorax"]
#: Size of the SIIM images, used when the DICOM is not at hand.
SIIM_IMAGE_SIZE = (1024, 1024)
#: Kaggle's folder of training DICOMs, beside train-rle.csv (its sibling
#: ``dicom-images-test`` has no labels).
TRAIN_FOLDER = "dicom-images-train"
_HEADER_TAGS = ["PatientID", "StudyInstanceUID", "Rows", "Columns", "ViewPosition"]


def find_dicoms(root: str | Path) -> dict[str, str]:
    """File stem -> path of every ``*.dcm`` under ``root`` (recursively)."""
    found: dict[str, str] = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name.lower().endswith(".dcm"):
                found.setdefault(name[:-4], os.path.join(folder, name))
    return found


def _header(path: str) -> dict[str, object]:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True,
                             specific_tags=_HEADER_TAGS)
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (AttributeError, ValueError, TypeError, OSError, EOFError,
            pydicom.errors.InvalidDicomError) as err:
        raise ImageReadError(path, f"cannot read the DICOM header (Rows/Columns): {err}"
                             ) from err
    return {"patient_id": str(ds.get("PatientID", "") or ""),
            "study_uid": str(ds.get("StudyInstanceUID", "") or ""),
            "view": str(ds.get("ViewPosition", "") or "").strip().upper(),
            "rows": rows, "cols": cols}


class SiimDataset(XrayDataset):
    """SIIM-ACR pneumothorax images with their RLE masks.

    One row per ``ImageId`` of the CSV (file order). Label 1 when any of its rows has a
    region, 0 when all are ``-1``. When the DICOM is found its header (read without
    pixels) gives ``patient_id`` (PatientID), ``study_id`` (StudyInstanceUID), ``view``
    (ViewPosition) and the mask size (``rows``, ``cols``); otherwise ``patient_id`` and
    ``study_id`` are the image id, ``view`` is blank and the size is 1024 x 1024.
    ``frontal`` is true unless the view is a known non-frontal one. :attr:`rles` maps
    image id -> its RLE strings.

    Args:
        rle_csv: ``train-rle.csv`` (plain or gzip).
        root: Folder searched recursively for ``<ImageId>.dcm``. Default: the CSV's
            ``dicom-images-train/`` subfolder when it exists (the Kaggle layout, whose
            unlabelled ``dicom-images-test/`` must stay out), else the CSV's folder.
        policy: Label policy.
        on_error: ``"raise"`` or ``"skip"``: a CSV image without a DICOM, a DICOM without
            a CSV row (both only with ``check_files``) and an unreadable header.
        check_files: Require a DICOM for every CSV image and a CSV row for every DICOM.

    Raises:
        MissingFileError: The CSV, or (``check_files``) a DICOM of a CSV image, is missing.
        CSVFormatError: (``check_files``) a DICOM under ``root`` has no CSV row, or the
            CSV is malformed.
        RLEError: A malformed RLE cell.
        ImageReadError: A DICOM header cannot be read.
    """

    name = "siim"

    def __init__(self, rle_csv: str | Path, root: str | Path | None = None, *,
                 policy: PolicyArg = None, on_error: str = "raise",
                 check_files: bool = True) -> None:
        from cxrlab.io.rle import read_rle_csv

        skips = SkipLog(on_error)
        self.rles: dict[str, list[str]] = read_rle_csv(rle_csv)
        if root is None:
            root = Path(rle_csv).parent
            if (root / TRAIN_FOLDER).is_dir():
                root = root / TRAIN_FOLDER
        base = Path(root).resolve()
        dicoms = find_dicoms(base) if base.is_dir() else {}
        ids = list(self.rles)
        if check_files:
            for extra in sorted(set(dicoms) - set(self.rles)):
                skips.handle(CSVFormatError(rle_csv, f"has no row for DICOM {dicoms[extra]}"))
            missing = np.array([i not in dicoms for i in ids], dtype=bool)
            keep = report_bad_rows(missing, lambda row: MissingFileError(
                rle_csv, f"ImageId {ids[row]} has no DICOM {ids[row]}.dcm under {base}"), skips)
        else:
            keep = np.ones(len(ids), dtype=bool)

        records = []
        for row, image_id in enumerate(ids):
            record = {"path": dicoms.get(image_id, str(base / f"{image_id}.dcm")),
                      "patient_id": image_id, "study_uid": image_id, "view": "",
                      "rows": SIIM_IMAGE_SIZE[0], "cols": SIIM_IMAGE_SIZE[1]}
            if keep[row] and image_id in dicoms:
                try:
                    header = _header(dicoms[image_id])
                except ImageReadError as err:
                    skips.handle(err)
                    keep[row] = False
                else:
                    record.update({k: v for k, v in header.items() if v != ""})
            records.append(record)
        table = pd.DataFrame.from_records(records, columns=["path", "patient_id", "study_uid",
                                                            "view", "rows", "cols"])
        table = table.rename(columns={"study_uid": "study_id"})
        table.insert(4, "frontal", [v == "" or is_frontal_view(v) for v in table["view"]])
        table["image_id"] = ids
        raw = np.array([[float(any(r != "-1" for r in self.rles[i]))] for i in ids],
                       dtype=np.float32).reshape(len(ids), 1)
        self.root = str(base)
        self._setup(table[keep], raw[keep], SIIM_PATHOLOGIES, policy, skips, rle_csv)

    def has_masks(self) -> bool:
        return True

    def mask_records(self) -> list[str]:
        """A digest of each image's RLE strings and mask size (see
        :meth:`XrayDataset.mask_records`)."""
        records = []
        for image_id, rows, cols in zip(self.table["image_id"], self.table["rows"],
                                        self.table["cols"]):
            text = f"{rows}x{cols}\x1e" + "\x1e".join(self.rles[image_id])
            records.append(hashlib.blake2b(text.encode(), digest_size=8).hexdigest())
        return records

    def mask(self, i: int, pathology: str | None = None) -> np.ndarray:
        """Union of the image's RLE regions, bool ``(rows, cols)``; empty for ``-1``."""
        from cxrlab.io.rle import masks_union

        if pathology is not None:
            self.pathology_index(pathology)
        row = self.table.iloc[self._row(i)]
        return masks_union(self.rles[row["image_id"]], width=int(row["cols"]),
                           height=int(row["rows"]), source=f"{self.source} ({row['image_id']})")
