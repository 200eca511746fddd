"""A hospital's own data as one CSV: image path, label columns and optional extras.

Label cells follow CheXpert (1, 0, -1, blank). Optional columns: a mask path (blank =
no mask), patient and study ids, the view, a split and a ``weak`` flag telling hard
labels (checked by a radiologist, usually with a mask) from weak ones, as the seed-003
screening model trains on both.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.data.datasets.base import (SPLIT_NAMES, PolicyArg, XrayDataset, is_frontal_view,
                                       missing_files, read_csv_table, report_bad_rows)
from cxrlab.data.datasets.chexpert import parse_label_block
from cxrlab.errors import ConfigError, LabelValueError, MissingFileError, SkipLog

TRUE_WORDS = {"1", "1.0", "true", "yes", "y", "t"}
FALSE_WORDS = {"0", "0.0", "false", "no", "n", "f", ""}


def _absolute(paths: pd.Series, base: Path) -> pd.Series:
    prefix = str(base) + "/"
    return pd.Series([p if not p or p.startswith("/") else prefix + p for p in paths.tolist()],
                     index=paths.index, dtype=object)


class GenericDataset(XrayDataset):
    """Images listed in a CSV with CheXpert-style label columns.

    Without ``patient_col`` each image is its own patient (``patient_id`` = the path as
    written in the CSV); without ``study_col`` the study is the patient's image (the
    path). Without ``view_col`` the view is blank; an image with a blank view counts as frontal.

    Args:
        csv: The CSV (plain or gzip).
        root: Folder relative paths are resolved against. Default: the CSV's folder.
        path_col: Column with the image path.
        label_cols: Label columns (the class names, in this order).
        mask_col: Column with a mask path (blank = none) or None.
        patient_col: Column with the patient id or None.
        study_col: Column with the study id or None.
        view_col: Column with the view (PA, AP, LATERAL...) or None.
        weak_col: Column flagging weak labels (1/true/yes = weak, 0/false/no/blank =
            hard) or None; becomes the bool table column ``weak``.
        split_col: Column with train / valid (val, validate) / test or None.
        policy: Label policy.
        on_error: ``"raise"`` or ``"skip"``.
        check_files: Verify that every image and mask exists.

    Raises:
        ConfigError: No label columns, or a column named twice.
        MissingFileError: The CSV, or (``check_files``) an image or mask, is missing.
        CSVFormatError: A named column is missing.
        LabelValueError: A label cell is not 1, 0, -1 or blank, a weak flag is not a
            yes/no word, or a split is unknown (names file, line and column).
    """

    name = "generic"

    def __init__(self, csv: str | Path, root: str | Path | None = None, path_col: str = "path",
                 label_cols: Sequence[str] = (), mask_col: str | None = None,
                 patient_col: str | None = None, study_col: str | None = None, *,
                 view_col: str | None = None, weak_col: str | None = None,
                 split_col: str | None = None, policy: PolicyArg = None,
                 on_error: str = "raise", check_files: bool = True) -> None:
        label_cols = [label_cols] if isinstance(label_cols, str) else list(label_cols)
        if not label_cols:
            raise ConfigError(csv, "generic dataset needs at least one label column")
        optional = [mask_col, patient_col, study_col, view_col, weak_col, split_col]
        named = [path_col, *label_cols, *[c for c in optional if c]]
        if len(set(named)) != len(named):
            raise ConfigError(csv, f"a column is named twice among {named}")
        skips = SkipLog(on_error)
        table = read_csv_table(csv, named)
        raw, keep = parse_label_block(table, label_cols, csv, skips)

        extra: dict[str, pd.Series] = {}
        if weak_col:
            words = table[weak_col].str.strip().str.lower()
            bad = ~words.isin(TRUE_WORDS | FALSE_WORDS).to_numpy() & keep
            keep &= report_bad_rows(bad, lambda row: LabelValueError(
                f"{csv}:{row + 2}", f"column {weak_col!r} holds {table.at[row, weak_col]!r}; "
                                    f"expected 1/0, true/false, yes/no or blank"), skips)
            extra["weak"] = words.isin(TRUE_WORDS)
        if split_col:
            split = table[split_col].str.strip().str.lower()
            bad = ~(split.isin(SPLIT_NAMES.keys()) | (split == "")).to_numpy() & keep
            keep &= report_bad_rows(bad, lambda row: LabelValueError(
                f"{csv}:{row + 2}", f"column {split_col!r} holds {table.at[row, split_col]!r}; "
                                    f"expected train, valid (val), test or blank"), skips)
            extra["split"] = split.map(SPLIT_NAMES).fillna("")

        base = (Path(root) if root is not None else Path(csv).resolve().parent).resolve()
        written = table[path_col].str.strip()
        blank_path = (written == "").to_numpy() & keep
        keep &= report_bad_rows(blank_path, lambda row: MissingFileError(
            f"{csv}:{row + 2}", f"column {path_col!r} is blank"), skips)
        paths = _absolute(written, base)
        if mask_col:
            extra["mask_path"] = _absolute(table[mask_col].str.strip(), base)
        if check_files:
            gone = np.zeros(len(table), dtype=bool)
            gone[keep] = missing_files(paths[keep].tolist())
            if mask_col:
                masks = extra["mask_path"]
                listed = keep & (masks != "").to_numpy()
                gone[listed] |= missing_files(masks[listed].tolist())

            def missing(row: int) -> MissingFileError:
                if not Path(paths.iat[row]).is_file():
                    return MissingFileError(f"{csv}:{row + 2}",
                                            f"image {paths.iat[row]} does not exist")
                return MissingFileError(f"{csv}:{row + 2}",
                                        f"mask {extra['mask_path'].iat[row]} does not exist")

            keep &= report_bad_rows(gone, missing, skips)

        patient = table[patient_col].str.strip() if patient_col else written
        view = table[view_col].str.strip().str.upper() if view_col else pd.Series([""] * len(table))
        out = pd.DataFrame({
            "path": paths, "patient_id": patient,
            "study_id": table[study_col].str.strip() if study_col else written,
            "view": view,
            "frontal": view.map(lambda v: v == "" or is_frontal_view(v)),
            **extra,
        })
        self.root = str(base)
        self._setup(out[keep], raw[keep], label_cols, policy, skips, csv)
