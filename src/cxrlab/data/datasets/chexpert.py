"""CheXpert (Stanford): ``train.csv`` / ``valid.csv`` with 14 observations per image.

Columns: ``Path,Sex,Age,Frontal/Lateral,AP/PA,<14 classes>``. ``Path`` looks like
``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg`` and is relative to
the folder that *holds* ``CheXpert-v1.0-small/`` (or ``CheXpert-v1.0/``). Label cells
hold exactly ``1.0``, ``0.0``, ``-1.0`` or blank.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.data.datasets.base import (PolicyArg, XrayDataset, missing_files, read_csv_table,
                                       regex_groups, report_bad_rows)
from cxrlab.data.labels import parse_label_cells
from cxrlab.errors import CSVFormatError, LabelValueError, MissingFileError, SkipLog

#: The 14 observations, in the column order of the CheXpert CSVs.
CHEXPERT_PATHOLOGIES = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity",
    "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
    "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices",
]
#: The five competition tasks of the CheXpert paper.
COMPETITION_TASKS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]

_PATH_PATTERN = r"(?:^|/)(?P<patient>patient\d+)/(?P<study>study\d+)/"


def default_root(csv: str | Path, first_path: str) -> Path:
    """The folder CheXpert ``Path`` values are relative to, when none is given.

    If the CSV sits in the folder named by the first component of ``Path`` (the usual
    ``<root>/CheXpert-v1.0-small/train.csv``), that folder's parent; otherwise the CSV's
    own folder.
    """
    csv = Path(csv).resolve()
    first = first_path.replace("\\", "/").split("/", 1)[0]
    return csv.parent.parent if first and csv.parent.name == first else csv.parent


def parse_label_block(table: pd.DataFrame, columns: list[str], csv: str | Path,
                      skips: SkipLog, line_offset: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Parse CheXpert-style label columns of ``table``.

    Args:
        table: The CSV as strings.
        columns: Label columns, in output order.
        csv: File name for messages.
        skips: Where bad rows go (raise or record).
        line_offset: File line of table row 0 (2 with one header line).

    Returns:
        ``(raw [N, C] float32, keep [N] bool)``; rows with a bad cell are not kept.
    """
    raw = np.empty((len(table), len(columns)), dtype=np.float32)
    bad = np.zeros((len(table), len(columns)), dtype=bool)
    for col, name in enumerate(columns):
        raw[:, col], bad[:, col] = parse_label_cells(table[name])

    def error(row: int) -> LabelValueError:
        name = columns[int(np.argmax(bad[row]))]
        return LabelValueError(f"{csv}:{row + line_offset}",
                               f"column {name!r} holds {table.at[row, name]!r}; "
                               f"expected 1.0, 0.0, -1.0 or blank")

    return raw, report_bad_rows(bad.any(axis=1), error, skips)


class ChexpertDataset(XrayDataset):
    """CheXpert ``train.csv`` or ``valid.csv``.

    ``patient_id`` is the ``patientNNNNN`` component of ``Path``, ``study_id`` is
    ``patientNNNNN/studyN``, ``view`` is ``AP/PA`` for frontal images (``AP``, ``PA``,
    ``LL``, ``RL``) and ``LATERAL`` for lateral ones, ``frontal`` comes from
    ``Frontal/Lateral``. The table also has ``sex`` and ``age`` (float, NaN if blank).

    Args:
        csv: ``train.csv`` / ``valid.csv`` (plain or gzip).
        root: Folder the ``Path`` values are relative to (the one holding
            ``CheXpert-v1.0-small/``). Default: see :func:`default_root`.
        policy: Label policy (a ``LabelPolicy``, ``"CLASS=policy"`` strings or None for
            U-Ignore).
        on_error: ``"raise"`` or ``"skip"`` rows with bad labels, paths or missing files.
        check_files: Verify that every image exists (False for label-only CSVs such as
            torchxrayvision's copy).

    Raises:
        MissingFileError: The CSV, or (``check_files``) an image, does not exist.
        CSVFormatError: A required column is missing, or a ``Path`` has no
            ``patientNNNNN/studyN/`` part, or ``Frontal/Lateral`` is neither.
        LabelValueError: A label cell is not 1.0, 0.0, -1.0 or blank (names file, line
            and column).
    """

    name = "chexpert"

    def __init__(self, csv: str | Path, root: str | Path | None = None, *,
                 policy: PolicyArg = None, on_error: str = "raise",
                 check_files: bool = True) -> None:
        skips = SkipLog(on_error)
        table = read_csv_table(csv, ["Path", "Frontal/Lateral", "AP/PA", *CHEXPERT_PATHOLOGIES])
        raw, keep = parse_label_block(table, CHEXPERT_PATHOLOGIES, csv, skips)

        relative = [p.strip().replace("\\", "/") for p in table["Path"].tolist()]
        parts = regex_groups(relative, _PATH_PATTERN)
        patient, study = parts["patient"], parts["study"]
        kind = table["Frontal/Lateral"].str.strip().str.lower()
        bad_path = pd.isna(patient)
        bad_kind = ~kind.isin(["frontal", "lateral"]).to_numpy()

        def format_error(row: int) -> CSVFormatError:
            if bad_path[row]:
                return CSVFormatError(f"{csv}:{row + 2}", f"Path {table.at[row, 'Path']!r} has "
                                                          f"no 'patientNNNNN/studyN/' part")
            return CSVFormatError(f"{csv}:{row + 2}", f"column 'Frontal/Lateral' holds "
                                  f"{table.at[row, 'Frontal/Lateral']!r}; expected Frontal "
                                  f"or Lateral")

        keep &= report_bad_rows((bad_path | bad_kind) & keep, format_error, skips)

        base = Path(root) if root is not None else default_root(
            csv, table.at[0, "Path"] if len(table) else "")
        base = base.resolve()
        prefix = str(base) + "/"
        paths = pd.Series([p if p.startswith("/") else prefix + p for p in relative],
                          dtype=object)
        if check_files:
            gone = np.zeros(len(table), dtype=bool)
            gone[keep] = missing_files(paths[keep].tolist())
            keep &= report_bad_rows(gone, lambda row: MissingFileError(
                f"{csv}:{row + 2}", f"image {paths.iat[row]} does not exist (root {base})"),
                skips)

        frontal = kind == "frontal"
        view = table["AP/PA"].str.strip().str.upper().where(frontal, "LATERAL")
        out = pd.DataFrame({
            "path": paths, "patient_id": patient,
            "study_id": pd.Series(patient, dtype=object) + "/" + pd.Series(study, dtype=object),
            "view": view, "frontal": frontal,
            "sex": table["Sex"] if "Sex" in table else "",
            "age": pd.to_numeric(table["Age"], errors="coerce") if "Age" in table else np.nan,
        })
        self.root = str(base)
        self._setup(out[keep], raw[keep], CHEXPERT_PATHOLOGIES, policy, skips, csv)
