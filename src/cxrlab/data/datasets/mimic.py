"""MIMIC-CXR-JPG v2: metadata, CheXpert-labeler labels per study and the official split.

Files (plain or ``.gz``): ``mimic-cxr-2.0.0-metadata.csv`` (``dicom_id, subject_id,
study_id, ViewPosition, ...``), ``mimic-cxr-2.0.0-chexpert.csv`` (``subject_id,
study_id`` + the 14 CheXpert observations, values 1.0 / 0.0 / -1.0 / blank),
``mimic-cxr-2.0.0-split.csv`` (``dicom_id, study_id, subject_id, split``). Images live at
``<root>/files/pXX/p<subject_id>/s<study_id>/<dicom_id>.jpg`` (``XX`` = the first two
digits of the subject id).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.data.datasets.base import (SPLIT_NAMES, PolicyArg, XrayDataset, is_frontal_view,
                                       missing_files, read_csv_table, report_bad_rows)
from cxrlab.data.datasets.chexpert import CHEXPERT_PATHOLOGIES, parse_label_block
from cxrlab.errors import CSVFormatError, MissingFileError, SkipLog


def _ids(column: pd.Series) -> pd.Series:
    """Integer-like id strings without a float suffix (``"10000032.0"`` -> ``"10000032"``)."""
    return column.astype(str).str.strip().str.replace(r"\.0$", "", regex=True)


class MimicDataset(XrayDataset):
    """MIMIC-CXR-JPG: one row per image of the metadata CSV, labels of its study.

    ``patient_id`` is ``subject_id``, ``study_id`` is ``study_id`` (both as digit
    strings), ``view`` is ``ViewPosition`` (``PA``, ``AP``, ``LATERAL``, ``LL``, ``AP
    AXIAL``...; blank when unrecorded), ``frontal`` is true for PA/AP views. Images whose
    study has no row in the labels CSV get NaN labels (the labeler gave none). With
    ``split_csv`` the table has ``split`` (``train`` / ``valid`` / ``test``; the file's
    ``validate`` is renamed), blank for images the split file does not list.

    Args:
        metadata_csv: ``mimic-cxr-2.0.0-metadata.csv(.gz)``.
        chexpert_csv: ``mimic-cxr-2.0.0-chexpert.csv(.gz)`` (or the NegBio file, same
            layout).
        split_csv: ``mimic-cxr-2.0.0-split.csv(.gz)`` or None.
        root: Folder holding ``files/``. Default: the folder of ``metadata_csv``.
        policy: Label policy.
        on_error: ``"raise"`` or ``"skip"``.
        check_files: Verify that every image exists.

    Raises:
        MissingFileError: A CSV, or (``check_files``) an image, does not exist.
        CSVFormatError: A required column is missing, an id is not a number, or a
            (subject, study) pair has two label rows.
        LabelValueError: A label cell is not 1.0, 0.0, -1.0 or blank.
    """

    name = "mimic"

    def __init__(self, metadata_csv: str | Path, chexpert_csv: str | Path,
                 split_csv: str | Path | None = None, root: str | Path | None = None, *,
                 policy: PolicyArg = None, on_error: str = "raise",
                 check_files: bool = True) -> None:
        skips = SkipLog(on_error)
        meta = read_csv_table(metadata_csv, ["dicom_id", "subject_id", "study_id"])
        labels = read_csv_table(chexpert_csv, ["subject_id", "study_id"])
        classes = [c for c in CHEXPERT_PATHOLOGIES if c in labels.columns]
        if not classes:
            raise CSVFormatError(chexpert_csv, f"has none of the CheXpert classes "
                                               f"{', '.join(CHEXPERT_PATHOLOGIES)}")

        raw_studies, keep_studies = parse_label_block(labels, classes, chexpert_csv, skips)
        label_key = _ids(labels["subject_id"]) + "/" + _ids(labels["study_id"])
        dup = label_key.duplicated(keep=False).to_numpy() & keep_studies
        keep_studies &= report_bad_rows(dup, lambda row: CSVFormatError(
            f"{chexpert_csv}:{row + 2}", f"study {label_key.iat[row]} has more than one "
                                         f"label row"), skips)
        # Studies whose label row was skipped lose their images too.
        dropped_keys = set(label_key[~keep_studies])

        subject, study = _ids(meta["subject_id"]), _ids(meta["study_id"])
        dicom = meta["dicom_id"].astype(str).str.strip()
        bad_id = ~(subject.str.fullmatch(r"\d+") & study.str.fullmatch(r"\d+")).to_numpy()
        keep = report_bad_rows(bad_id, lambda row: CSVFormatError(
            f"{metadata_csv}:{row + 2}", f"subject_id {meta.at[row, 'subject_id']!r} / "
                                         f"study_id {meta.at[row, 'study_id']!r} is not a "
                                         f"number"), skips)
        key = subject + "/" + study
        keep &= ~key.isin(dropped_keys).to_numpy()

        position = pd.Series(np.arange(len(labels)), index=label_key)[keep_studies]
        row_of_image = key.map(position).to_numpy(dtype=np.float64)
        raw = np.full((len(meta), len(classes)), np.nan, dtype=np.float32)
        labelled = ~np.isnan(row_of_image)
        raw[labelled] = raw_studies[row_of_image[labelled].astype(np.int64)]

        base = Path(root) if root is not None else Path(metadata_csv).resolve().parent
        base = base.resolve()
        paths = (str(base) + "/files/p" + subject.str[:2] + "/p" + subject + "/s" + study
                 + "/" + dicom + ".jpg")
        if check_files:
            gone = np.zeros(len(meta), dtype=bool)
            gone[keep] = missing_files(paths[keep].tolist())
            keep &= report_bad_rows(gone, lambda row: MissingFileError(
                f"{metadata_csv}:{row + 2}", f"image {paths.iat[row]} does not exist"), skips)

        view = (meta["ViewPosition"].str.strip().str.upper() if "ViewPosition" in meta
                else pd.Series([""] * len(meta)))
        out = pd.DataFrame({"path": paths, "patient_id": subject, "study_id": study,
                            "view": view, "frontal": view.map(is_frontal_view).astype(bool),
                            "dicom_id": dicom})
        if split_csv is not None:
            split = read_csv_table(split_csv, ["dicom_id", "split"])
            names = split["split"].str.strip().str.lower().map(SPLIT_NAMES).fillna("")
            lookup = pd.Series(names.to_numpy(), index=split["dicom_id"].str.strip())
            lookup = lookup[~lookup.index.duplicated()]
            out["split"] = dicom.map(lookup).fillna("")
        self.root = str(base)
        self._setup(out[keep], raw[keep], classes, policy, skips, chexpert_csv)
