"""What the BraTS page shows, read from the files a BraTS run writes (no torch, no training code).

A run folder of ``cxrlab brats train`` / ``brats evaluate`` holds ``metrics.json`` (per case
and mean/median Dice and HD95 of WT, TC, ET), ``split.json`` (the data root, layout and
label convention) and ``predictions/<case>.nii.gz`` (labels in the input's space and
convention). :func:`region_table` and :func:`case_table` are the page's tables;
:func:`load_case_views` reads one case's four sequences, reference and prediction in the
canonical classes for the slice viewer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrlab.dashboard.index import RunRecord
from cxrlab.data.datasets.brats import MODALITIES, REGIONS, BratsDataset, to_canonical
from cxrlab.errors import MissingFileError, VolumeMismatchError
from cxrlab.io.nifti import read_nifti

PREDICTIONS = "predictions"


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``metrics.json``.

    Raises:
        MissingFileError: The run has not been evaluated.
    """
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise MissingFileError(path, "the run has no test scores yet (cxrlab brats evaluate RUN_DIR writes them)")
    return json.loads(path.read_text(encoding="utf-8"))


def region_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """One row per region: mean and median Dice and HD95 (mm) over the scored cases."""
    rows = [{"region": region, "dice_mean": metrics["mean"][region]["dice"],
             "dice_median": metrics["median"][region]["dice"], "hd95_mean_mm": metrics["mean"][region]["hd95"],
             "hd95_median_mm": metrics["median"][region]["hd95"]} for region in REGIONS]
    return pd.DataFrame(rows)


def case_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """One row per scored case: Dice and HD95 of each region, worst mean Dice first."""
    rows = []
    for case, scores in (metrics.get("cases") or {}).items():
        row: dict[str, Any] = {"case": case}
        for region in REGIONS:
            row[f"{region}_dice"] = scores[region]["dice"]
            row[f"{region}_hd95"] = scores[region]["hd95"]
        rows.append(row)
    frame = pd.DataFrame(rows, columns=["case"] + [f"{r}_{k}" for r in REGIONS for k in ("dice", "hd95")])
    if frame.empty:
        return frame
    order = frame[[f"{r}_dice" for r in REGIONS]].mean(axis=1).sort_values(kind="stable").index
    return frame.loc[order].reset_index(drop=True)


def runs_table(records: list[RunRecord]) -> pd.DataFrame:
    """One row per BraTS run: mean Dice and HD95 of each region on its scored cases (Runs page, comparison)."""
    rows = []
    for record in records:
        scores = record.info.get("regions") or {}
        row: dict[str, Any] = {"run": record.name, "state": record.state, "arch": record.arch,
                               "stages": record.info.get("stages"), "seed": record.seed,
                               "n_cases": record.info.get("n_cases")}
        for region in REGIONS:
            row[f"{region}_dice"] = (scores.get(region) or {}).get("dice")
            row[f"{region}_hd95"] = (scores.get(region) or {}).get("hd95")
        rows.append(row)
    return pd.DataFrame(rows, columns=["run", "state", "arch", "stages", "seed", "n_cases"]
                        + [f"{r}_{k}" for r in REGIONS for k in ("dice", "hd95")])


@dataclass
class CaseViews:
    """One case for the slice viewer.

    Attributes:
        case_id: The case.
        image: ``(4, x, y, z)`` float32 in :data:`~cxrlab.data.datasets.brats.MODALITIES` order.
        reference: Canonical classes ``(x, y, z)`` of the reference segmentation, or None.
        prediction: Canonical classes of the run's prediction, or None when it wrote none.
        spacing: Voxel size in mm.
    """

    case_id: str
    image: np.ndarray
    reference: np.ndarray | None
    prediction: np.ndarray | None
    spacing: tuple[float, float, float]

    @property
    def modalities(self) -> tuple[str, ...]:
        return MODALITIES


def predicted_cases(run_dir: str | Path) -> list[str]:
    """Case ids with a prediction NIfTI under ``run_dir/predictions``."""
    folder = Path(run_dir) / PREDICTIONS
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".nii.gz")] for p in folder.glob("*.nii.gz"))


def load_case_views(run_dir: str | Path, case_id: str) -> CaseViews:
    """The case's sequences (from the run's data root in ``split.json``), reference and prediction.

    Raises:
        MissingFileError: The run has no ``split.json`` or its data root is gone.
        VolumeMismatchError: The prediction's grid differs from the case's.
        LabelValueError: The prediction holds values outside the case's label convention.
    """
    run_dir = Path(run_dir)
    split_path = run_dir / "split.json"
    if not split_path.is_file():
        raise MissingFileError(split_path, "not a BraTS run folder (no case split)")
    split = json.loads(split_path.read_text(encoding="utf-8"))
    root = Path(split.get("root") or "")
    if not root.is_dir():
        raise MissingFileError(root, "the run's data root is not there any more (split.json 'root')")
    dataset = BratsDataset(root, layout=split.get("layout", "auto"), labels=split.get("labels", "auto"),
                           only=[case_id])
    case = dataset.load(case_id)
    prediction = None
    path = run_dir / PREDICTIONS / f"{case_id}.nii.gz"
    if path.is_file():
        volume = read_nifti(path, dtype=np.int16)
        if volume.array.shape != case.image.shape[1:]:
            raise VolumeMismatchError(path, f"prediction grid {volume.array.shape} differs from the case's "
                                            f"{case.image.shape[1:]}")
        prediction = to_canonical(volume.array, case.convention, path, case_id)
    return CaseViews(case.case_id, case.image, case.label, prediction, tuple(float(s) for s in case.spacing))
