"""NIH ChestX-ray14: ``Data_Entry_2017(_v2020).csv``, ``BBox_List_2017.csv`` and the lists.

``Finding Labels`` holds ``|``-separated findings or ``No Finding``; every image is
labelled for all 14 pathologies (1 or 0, never uncertain or blank). ``BBox_List_2017.csv``
(header ``Image Index,Finding Label,Bbox [x,y,w,h],,,``: the box spans four columns) has
984 boxes on 880 images, in the pixel coordinates of the 1024 x 1024 originals; the file
spells Infiltration ``Infiltrate``. Images live in ``<root>/images/`` or, in the Kaggle
layout, ``<root>/images_001/images/`` ... ``<root>/images_012/images/``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.data.datasets.base import (PolicyArg, XrayDataset, boxes_mask, grouped_digests, image_shape,
                                       is_frontal_view, read_csv_table, report_bad_rows)
from cxrlab.errors import CSVFormatError, LabelValueError, MissingFileError, SkipLog

NIH_PATHOLOGIES = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
    "Hernia",
]
#: NIH names of the findings CheXpert also labels, with the CheXpert name. The others
#: (Infiltration, Mass, Nodule, Emphysema, Fibrosis, Pleural_Thickening, Hernia) have no
#: CheXpert class of the same meaning (Mass and Nodule fall under the broader CheXpert
#: "Lung Lesion", see ``NIH_TO_CHEXPERT_BROAD``).
NIH_TO_CHEXPERT = {
    "Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly",
    "Effusion": "Pleural Effusion", "Pneumonia": "Pneumonia", "Pneumothorax": "Pneumothorax",
    "Consolidation": "Consolidation", "Edema": "Edema",
}
CHEXPERT_TO_NIH = {chexpert: nih for nih, chexpert in NIH_TO_CHEXPERT.items()}
#: Adds the many-to-one approximations: Mass / Nodule -> Lung Lesion, Infiltration -> Lung Opacity.
NIH_TO_CHEXPERT_BROAD = {**NIH_TO_CHEXPERT, "Mass": "Lung Lesion", "Nodule": "Lung Lesion",
                         "Infiltration": "Lung Opacity"}
#: Spellings of the box file that differ from Data_Entry.
BBOX_LABEL_NAMES = {"Infiltrate": "Infiltration"}
#: Size (rows, cols) of the original images, the frame of the box coordinates.
NIH_IMAGE_SIZE = (1024, 1024)
NO_FINDING = "No Finding"


def read_nih_boxes(path: str | Path, on_error: str | SkipLog = "raise") -> pd.DataFrame:
    """Read ``BBox_List_2017.csv(.gz)`` into a table ``image, label, x, y, w, h``.

    Labels use the Data_Entry spelling (``Infiltrate`` -> ``Infiltration``); coordinates
    are floats in the 1024 x 1024 frame of the original images.

    Raises:
        CSVFormatError: Fewer than six columns, another header, a coordinate that is not
            a number or a non-positive width/height (names the line).
        LabelValueError: A finding that is not one of :data:`NIH_PATHOLOGIES`.
    """
    skips = on_error if isinstance(on_error, SkipLog) else SkipLog(on_error)
    table = read_csv_table(path)
    if table.shape[1] < 6 or list(table.columns[:2]) != ["Image Index", "Finding Label"]:
        raise CSVFormatError(path, f"expected header 'Image Index,Finding Label,Bbox "
                                   f"[x,y,w,h],,,' (6 columns), found {list(table.columns)}")
    boxes = pd.DataFrame({"image": table.iloc[:, 0].str.strip(),
                          "label": table.iloc[:, 1].str.strip().replace(BBOX_LABEL_NAMES)})
    for k, axis in enumerate("xywh"):
        boxes[axis] = pd.to_numeric(table.iloc[:, 2 + k].str.strip(), errors="coerce")
    coords = boxes[list("xywh")].to_numpy(dtype=np.float64)
    bad_number = ~np.isfinite(coords).all(axis=1) | (coords[:, 2] <= 0) | (coords[:, 3] <= 0)
    keep = report_bad_rows(bad_number, lambda row: CSVFormatError(
        f"{path}:{row + 2}", f"box {table.iloc[row, 2:6].tolist()} is not four numbers with "
                             f"positive width and height"), skips)
    bad_label = ~boxes["label"].isin(NIH_PATHOLOGIES).to_numpy() & keep
    keep &= report_bad_rows(bad_label, lambda row: LabelValueError(
        f"{path}:{row + 2}", f"column 'Finding Label' holds {boxes.at[row, 'label']!r}; "
                             f"expected one of {', '.join(NIH_PATHOLOGIES)}"), skips)
    return boxes[keep].reset_index(drop=True)


def _read_list(path: str | Path) -> set[str]:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "image list does not exist")
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def _image_index(root: Path) -> dict[str, str]:
    """File name -> path of the images under ``root/images`` and ``root/images_*/images``."""
    folders = [root / "images"] + sorted(root.glob("images_*/images"))
    found: dict[str, str] = {}
    for folder in folders:
        if folder.is_dir():
            with os.scandir(folder) as entries:
                for entry in entries:
                    found.setdefault(entry.name, entry.path)
    return found


class NihDataset(XrayDataset):
    """NIH ChestX-ray14 with optional boxes and official train/test lists.

    ``patient_id`` is ``Patient ID``, ``study_id`` the image name without extension
    (each image is its own study), ``view`` is ``View Position`` (PA / AP; all frontal).
    The table has ``image_id`` (``Image Index``), ``age``, ``sex`` and, with the lists,
    ``split`` (``train`` for ``train_val_list.txt``, ``test`` for ``test_list.txt``,
    blank otherwise). :attr:`boxes` is the box table (empty without ``bbox_csv``).

    Args:
        data_entry_csv: ``Data_Entry_2017.csv`` or ``Data_Entry_2017_v2020.csv`` (or .gz).
        bbox_csv: ``BBox_List_2017.csv`` or None.
        root: Folder with ``images/`` (or ``images_XXX/images/``). Default: the CSV's
            folder.
        train_list: ``train_val_list.txt`` or None.
        test_list: ``test_list.txt`` or None.
        policy: Label policy (NIH has no uncertain labels; only ``blank`` matters).
        on_error: ``"raise"`` or ``"skip"``.
        check_files: Verify that every image exists.

    Raises:
        MissingFileError: A file, or (``check_files``) an image, does not exist.
        CSVFormatError: A required column is missing.
        LabelValueError: ``Finding Labels`` is blank or names an unknown finding.
    """

    name = "nih"

    def __init__(self, data_entry_csv: str | Path, bbox_csv: str | Path | None = None,
                 root: str | Path | None = None, train_list: str | Path | None = None,
                 test_list: str | Path | None = None, *, policy: PolicyArg = None,
                 on_error: str = "raise", check_files: bool = True) -> None:
        skips = SkipLog(on_error)
        table = read_csv_table(data_entry_csv, ["Image Index", "Finding Labels", "Patient ID",
                                                "View Position"])
        findings = table["Finding Labels"].str.replace(" ", "", regex=False)
        dummies = findings.str.get_dummies(sep="|")
        known = set(NIH_PATHOLOGIES) | {NO_FINDING.replace(" ", "")}
        unknown = [c for c in dummies.columns if c not in known]
        bad = (findings == "").to_numpy()
        if unknown:
            bad = bad | dummies[unknown].to_numpy().any(axis=1)
        keep = report_bad_rows(bad, lambda row: LabelValueError(
            f"{data_entry_csv}:{row + 2}", f"column 'Finding Labels' holds "
            f"{table.at[row, 'Finding Labels']!r}; expected '|'-separated names from "
            f"{', '.join(NIH_PATHOLOGIES)} or 'No Finding'"), skips)
        raw = np.zeros((len(table), len(NIH_PATHOLOGIES)), dtype=np.float32)
        for col, name in enumerate(NIH_PATHOLOGIES):
            if name in dummies.columns:
                raw[:, col] = dummies[name].to_numpy()

        base = (Path(root) if root is not None else Path(data_entry_csv).parent).resolve()
        names = table["Image Index"].str.strip()
        located = _image_index(base)
        default_dir = str(base / "images") + "/"
        paths = pd.Series([located.get(n, default_dir + n) for n in names.tolist()], dtype=object)
        if check_files:
            gone = ~names.isin(located.keys()).to_numpy() & keep
            keep &= report_bad_rows(gone, lambda row: MissingFileError(
                f"{data_entry_csv}:{row + 2}", f"image {names.iat[row]} is in neither "
                f"{base / 'images'} nor {base}/images_*/images"), skips)

        view = table["View Position"].str.strip().str.upper()
        out = pd.DataFrame({
            "path": paths, "patient_id": table["Patient ID"].str.strip(),
            "study_id": names.str.replace(r"\.[A-Za-z]+$", "", regex=True), "view": view,
            "frontal": view.map(is_frontal_view).astype(bool), "image_id": names,
            "age": pd.to_numeric(table.get("Patient Age", pd.Series(dtype=str)), errors="coerce"),
            "sex": table.get("Patient Gender", ""),
        })
        if train_list is not None or test_list is not None:
            split = pd.Series([""] * len(out), dtype=object)
            if train_list is not None:
                split[names.isin(_read_list(train_list)).to_numpy()] = "train"
            if test_list is not None:
                split[names.isin(_read_list(test_list)).to_numpy()] = "test"
            out["split"] = split
        empty = pd.DataFrame({"image": pd.Series(dtype=object), "label": pd.Series(dtype=object),
                              **{a: pd.Series(dtype=np.float64) for a in "xywh"}})
        self.boxes: pd.DataFrame = (read_nih_boxes(bbox_csv, skips) if bbox_csv is not None
                                    else empty)
        self.root = str(base)
        self._setup(out[keep], raw[keep], NIH_PATHOLOGIES, policy, skips, data_entry_csv)

    def boxes_for(self, i: int, pathology: str | None = None) -> pd.DataFrame:
        """Boxes (``image, label, x, y, w, h``) of image ``i``, of one pathology if given."""
        if pathology is not None:
            self.pathology_index(pathology)
        image = self.table.at[self._row(i), "image_id"]
        found = self.boxes[self.boxes["image"] == image]
        if pathology is not None:
            found = found[found["label"] == pathology]
        return found.reset_index(drop=True)

    def has_masks(self) -> bool:
        return len(self.boxes) > 0

    def mask_records(self) -> list[str]:
        """A digest of each image's boxes (see :meth:`XrayDataset.mask_records`)."""
        return grouped_digests(self.table["image_id"].tolist(), self.boxes, "image")

    def mask(self, i: int, pathology: str | None = None) -> np.ndarray | None:
        """Union of the boxes of image ``i`` (of ``pathology`` if given) as a mask.

        The mask has the image's size (read from the file header when the file exists,
        :data:`NIH_IMAGE_SIZE` otherwise); boxes are scaled from the 1024 x 1024 frame
        when the file has another size. Returns None when the image has no box (NIH
        boxes exist for 880 images; no box does not mean no finding).
        """
        found = self.boxes_for(i, pathology)
        if found.empty:
            return None
        path = self.table.at[self._row(i), "path"]
        shape = image_shape(path) if os.path.isfile(path) else NIH_IMAGE_SIZE
        scale_y, scale_x = shape[0] / NIH_IMAGE_SIZE[0], shape[1] / NIH_IMAGE_SIZE[1]
        x, y = found["x"].to_numpy() * scale_x, found["y"].to_numpy() * scale_y
        w, h = found["w"].to_numpy() * scale_x, found["h"].to_numpy() * scale_y
        return boxes_mask(shape, x, y, x + w, y + h)
