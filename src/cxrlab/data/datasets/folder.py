"""Pediatric pneumonia folders (Kermany et al., Mendeley Data / Kaggle "chest_xray").

Layout: ``<root>/{train,test,val}/{NORMAL,PNEUMONIA}/*.jpeg``. File names carry the
patient and, for pneumonia, the cause: ``person1_bacteria_1.jpeg``,
``person1_virus_6.jpeg``, ``IM-0115-0001.jpeg``, ``NORMAL2-IM-1427-0001.jpeg``.
A root without split folders, holding ``NORMAL/`` and ``PNEUMONIA/`` directly, is
accepted too (``split`` is then blank).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.data.datasets.base import SPLIT_NAMES, PolicyArg, XrayDataset
from cxrlab.errors import MissingFileError, SkipLog

CLASS_FOLDERS = {"NORMAL": 0.0, "PNEUMONIA": 1.0}
FOLDER_PATHOLOGIES = ["Pneumonia"]
SUBTYPE_PATHOLOGIES = ["Pneumonia", "Bacterial", "Viral"]
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
_PERSON = re.compile(r"^(person\d+)_", re.IGNORECASE)
_IM = re.compile(r"^(.*IM-\d+)-\d+$", re.IGNORECASE)


def patient_from_name(stem: str) -> str:
    """Patient id from a file stem: ``person123`` from ``person123_bacteria_456``,
    ``NORMAL2-IM-1427`` from ``NORMAL2-IM-1427-0001``, ``IM-0115`` from ``IM-0115-0001``;
    the whole stem for any other name (one patient per image)."""
    for pattern in (_PERSON, _IM):
        found = pattern.match(stem)
        if found:
            return found.group(1)
    return stem


class FolderDataset(XrayDataset):
    """Kermany / Mendeley pediatric pneumonia folders.

    Labels: ``Pneumonia`` = 1 for images in ``PNEUMONIA/``, 0 in ``NORMAL/``. With
    ``subtypes=True`` also ``Bacterial`` and ``Viral`` from the file name (``_bacteria_``
    / ``_virus_``): 0 for normal images, NaN for a pneumonia image whose name says
    neither. ``patient_id`` comes from the file name (:func:`patient_from_name`),
    ``study_id`` is the path relative to ``root`` without suffix (one study per image),
    ``view`` is blank and ``frontal`` true (all images are frontal), ``split`` is
    ``train`` / ``valid`` (folder ``val``) / ``test``.

    Args:
        root: The folder holding ``train/``, ``test/``, ``val/`` (or the class folders).
        policy: Label policy.
        on_error: Accepted for a uniform signature; files come from the folder scan, so
            nothing is skipped.
        check_files: Accepted for a uniform signature; listed files exist by construction.
        subtypes: Add the ``Bacterial`` and ``Viral`` classes.

    Raises:
        MissingFileError: ``root`` does not exist or holds no class folder with images.
    """

    name = "folder"

    def __init__(self, root: str | Path, *, policy: PolicyArg = None, on_error: str = "raise",
                 check_files: bool = True, subtypes: bool = False) -> None:
        base = Path(root).resolve()
        if not base.is_dir():
            raise MissingFileError(base, "image folder does not exist")
        records = []
        for split_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            if split_dir.name.upper() in CLASS_FOLDERS:
                groups = [("", split_dir)]
            elif split_dir.name.lower() in SPLIT_NAMES:
                groups = [(SPLIT_NAMES[split_dir.name.lower()], c) for c in
                          sorted(split_dir.iterdir()) if c.is_dir()
                          and c.name.upper() in CLASS_FOLDERS]
            else:
                continue
            for split, class_dir in groups:
                for path in sorted(class_dir.iterdir()):
                    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                        records.append((split, class_dir.name.upper(), path))
        if not records:
            raise MissingFileError(base, "holds no NORMAL/ or PNEUMONIA/ folder with images "
                                         "(directly or under train/, test/, val/)")
        raw = np.zeros((len(records), 3), dtype=np.float32)
        rows = []
        for k, (split, label, path) in enumerate(records):
            stem = path.stem
            positive = CLASS_FOLDERS[label]
            lowered = stem.lower()
            bacterial, viral = "_bacteria" in lowered, "_virus" in lowered
            raw[k] = (positive, float(bacterial), float(viral))
            if positive and not (bacterial or viral):
                raw[k, 1:] = np.nan
            relative = path.relative_to(base).with_suffix("").as_posix()
            rows.append({"path": str(path), "patient_id": patient_from_name(stem),
                         "study_id": relative, "view": "", "frontal": True, "split": split})
        table = pd.DataFrame(rows)
        classes = SUBTYPE_PATHOLOGIES if subtypes else FOLDER_PATHOLOGIES
        self.root = str(base)
        self._setup(table, raw[:, :len(classes)], classes, policy, SkipLog(on_error), base)
