"""NIH ChestX-ray14 adapter: real Data_Entry and BBox_List files, layouts and bad input."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cxrlab.data.datasets.nih import (CHEXPERT_TO_NIH, NIH_PATHOLOGIES, NIH_TO_CHEXPERT,
                                      NihDataset, read_nih_boxes)
from cxrlab.data.datasets.chexpert import CHEXPERT_PATHOLOGIES
from cxrlab.errors import CSVFormatError, LabelValueError, MissingFileError

ENTRY_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
                "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")


@pytest.fixture(scope="module")
def nih(xrv_data) -> NihDataset:
    return NihDataset(xrv_data / "Data_Entry_2017_v2020.csv.gz",
                      bbox_csv=xrv_data / "BBox_List_2017.csv.gz", check_files=False)


@pytest.fixture(scope="module")
def entries(xrv_data) -> pd.DataFrame:
    return pd.read_csv(xrv_data / "Data_Entry_2017_v2020.csv.gz")


def test_real_data_entry_rows_patients_counts(nih, entries):
    assert len(nih) == len(entries) == 112120
    assert nih.table["patient_id"].nunique() == entries["Patient ID"].nunique() == 30805
    assert nih.table["study_id"].nunique() == 112120
    assert nih.pathologies == NIH_PATHOLOGIES
    counted = nih.label_counts()
    for name in NIH_PATHOLOGIES:
        expected = int(entries["Finding Labels"].str.contains(rf"(?:^|\|){name}(?:\||$)").sum())
        counts = counted[name]
        assert counts == {"n": 112120, "positive": expected, "negative": 112120 - expected}
    assert nih.label_counts()["Effusion"]["positive"] == 13317
    assert nih.label_counts()["Hernia"]["positive"] == 227
    no_finding = (entries["Finding Labels"] == "No Finding").to_numpy()
    assert int(no_finding.sum()) == 60361
    assert (nih.raw_labels[no_finding] == 0).all()
    assert not np.isnan(nih.raw_labels).any()
    assert nih.table["frontal"].all()
    assert (nih.table["view"].value_counts().to_dict() == {"PA": 67310, "AP": 44810})


def test_real_bbox_list(nih, xrv_data):
    boxes = read_nih_boxes(xrv_data / "BBox_List_2017.csv.gz")
    assert len(boxes) == len(nih.boxes) == 984
    assert list(boxes.columns) == ["image", "label", "x", "y", "w", "h"]
    assert boxes["image"].nunique() == 880
    assert boxes["label"].value_counts().to_dict() == {
        "Atelectasis": 180, "Effusion": 153, "Cardiomegaly": 146, "Infiltration": 123,
        "Pneumonia": 120, "Pneumothorax": 98, "Mass": 85, "Nodule": 79}
    first = boxes.iloc[0]
    assert first["image"] == "00013118_008.png" and first["label"] == "Atelectasis"
    assert first["x"] == pytest.approx(225.084745762712)
    assert first["h"] == pytest.approx(79.1864406779661)


def test_real_boxes_as_masks(nih):
    assert nih.has_masks()
    row = int(np.flatnonzero(nih.table["image_id"] == "00013118_008.png")[0])
    mask = nih.mask(row)
    assert mask.shape == (1024, 1024) and mask.dtype == bool
    rows, cols = np.nonzero(mask)
    assert (cols.min(), rows.min()) == (225, 547)          # floor(x), floor(y)
    assert (cols.max(), rows.max()) == (311, 626)          # ceil(x + w) - 1, ceil(y + h) - 1
    assert nih.mask(row, "Atelectasis").sum() == mask.sum()
    assert nih.mask(row, "Effusion") is None
    assert nih.mask(0) is None  # no box: localization unknown, not negative
    # Every boxed image is labelled positive for the boxed finding in Data_Entry.
    labelled = nih.boxes.merge(nih.table[["image_id"]].reset_index(),
                               left_on="image", right_on="image_id")
    cols_of = [NIH_PATHOLOGIES.index(n) for n in labelled["label"]]
    assert (nih.raw_labels[labelled["index"].to_numpy(), cols_of] == 1).mean() > 0.95


def test_chexpert_name_mapping():
    assert NIH_TO_CHEXPERT["Effusion"] == "Pleural Effusion"
    assert CHEXPERT_TO_NIH["Pleural Effusion"] == "Effusion"
    assert set(NIH_TO_CHEXPERT) <= set(NIH_PATHOLOGIES)
    assert set(NIH_TO_CHEXPERT.values()) <= set(CHEXPERT_PATHOLOGIES)
    assert {"Atelectasis", "Cardiomegaly", "Edema", "Consolidation", "Pneumothorax",
            "Pneumonia"} <= set(NIH_TO_CHEXPERT)


def _entry_csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    lines = [ENTRY_HEADER] + [f"{image},{labels},0,{patient},50,M,PA,1024,1024,0.14,0.14"
                              for image, labels, patient in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _png(path: Path, size: int = 64) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((size, size), 90, np.uint8))


def test_kaggle_layout_lists_and_scaled_boxes(tmp_path):
    _png(tmp_path / "images_001/images/00000001_000.png", size=64)
    _png(tmp_path / "images_002/images/00000002_000.png")
    csv = _entry_csv(tmp_path / "Data_Entry_2017.csv", [
        ("00000001_000.png", "Cardiomegaly|Effusion", "1"),
        ("00000002_000.png", "No Finding", "2")])
    (tmp_path / "train_val_list.txt").write_text("00000001_000.png\n")
    (tmp_path / "test_list.txt").write_text("00000002_000.png\n")
    bbox = tmp_path / "BBox_List_2017.csv"
    bbox.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                    "00000001_000.png,Cardiomegaly,512,256,256,512\n")
    data = NihDataset(csv, bbox, train_list=tmp_path / "train_val_list.txt",
                      test_list=tmp_path / "test_list.txt")
    assert data.table["path"].tolist() == [
        str(tmp_path.resolve() / "images_001/images/00000001_000.png"),
        str(tmp_path.resolve() / "images_002/images/00000002_000.png")]
    assert data.table["split"].tolist() == ["train", "test"]
    np.testing.assert_array_equal(data.raw_labels[0] == 1, np.isin(
        NIH_PATHOLOGIES, ["Cardiomegaly", "Effusion"]))
    assert data.image(0).pixels.shape == (64, 64)
    mask = data.mask(0, "Cardiomegaly")  # file is 64 px: boxes scaled by 1/16
    assert mask.shape == (64, 64)
    assert np.array_equal(np.argwhere(mask).min(0), [16, 32])
    assert np.array_equal(np.argwhere(mask).max(0), [47, 47])


def test_missing_image_and_bad_finding(tmp_path):
    _png(tmp_path / "images/00000001_000.png")
    csv = _entry_csv(tmp_path / "e.csv", [("00000001_000.png", "Effusion", "1"),
                                          ("00000003_000.png", "Effusion", "3"),
                                          ("00000004_000.png", "Efusion|Mass", "4")])
    with pytest.raises(LabelValueError, match=r"e\.csv:4.*'Efusion\|Mass'"):
        NihDataset(csv)
    only_missing = _entry_csv(tmp_path / "m.csv", [("00000001_000.png", "Effusion", "1"),
                                                   ("00000003_000.png", "Effusion", "3")])
    with pytest.raises(MissingFileError, match=r"m\.csv:3.*00000003_000\.png"):
        NihDataset(only_missing)
    data = NihDataset(csv, on_error="skip")
    assert data.table["image_id"].tolist() == ["00000001_000.png"]
    assert data.skips.count == 2
    unchecked = NihDataset(csv, on_error="skip", check_files=False)
    assert len(unchecked) == 2 and unchecked.skips.count == 1


def test_bbox_file_errors(tmp_path):
    bad = tmp_path / "b.csv"
    bad.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\nimg.png,Mass,1,2,three,4\n")
    with pytest.raises(CSVFormatError, match=r"b\.csv:2"):
        read_nih_boxes(bad)
    bad.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\nimg.png,Tumour,1,2,3,4\n")
    with pytest.raises(LabelValueError, match="Tumour"):
        read_nih_boxes(bad)
    assert len(read_nih_boxes(bad, on_error="skip")) == 0
    bad.write_text("image,label\nimg.png,Mass\n")
    with pytest.raises(CSVFormatError, match="Image Index"):
        read_nih_boxes(bad)
