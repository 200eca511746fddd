"""VinDr-CXR adapter: the real Kaggle train.csv (torchxrayvision copy) and a tiny tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxrlab.data.datasets.vindr import VINDR_PATHOLOGIES, VindrDataset
from cxrlab.errors import CSVFormatError, LabelValueError, MissingFileError

HEADER = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max"


@pytest.fixture(scope="module")
def vindr(xrv_data) -> VindrDataset:
    return VindrDataset(xrv_data / "vinbigdata-train.csv.gz", check_files=False)


def test_real_csv_images_and_labels(vindr, xrv_data):
    raw = pd.read_csv(xrv_data / "vinbigdata-train.csv.gz")
    assert len(raw) == 67914
    assert len(vindr) == raw["image_id"].nunique() == 15000
    assert vindr.pathologies == VINDR_PATHOLOGIES
    # Positive if any radiologist marked the class: count distinct images per class.
    findings = raw[raw["class_name"] != "No finding"]
    per_class = findings.groupby("class_name")["image_id"].nunique()
    counts = vindr.label_counts()
    for name in VINDR_PATHOLOGIES:
        assert counts[name] == {"n": 15000, "positive": int(per_class[name]),
                                "negative": 15000 - int(per_class[name])}
    assert counts["Aortic enlargement"]["positive"] == 3067
    assert counts["Pneumothorax"]["positive"] == 96
    normal = raw["image_id"].nunique() - findings["image_id"].nunique()
    assert int((vindr.raw_labels.sum(axis=1) == 0).sum()) == normal == 10606
    assert (vindr.table["n_readers"] == 3).all()
    assert len(vindr.boxes) == len(findings) == 36096
    assert vindr.table["patient_id"].equals(vindr.table["image_id"])
    first = vindr.table.iloc[0]
    assert first["path"].endswith(f"/train/{first['image_id']}.dicom")


def _dicom(path: Path, rows: int, cols: int) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(rows * cols, dtype=np.uint16) % 4096).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def test_tiny_tree_boxes_to_masks(tmp_path):
    _dicom(tmp_path / "train/aaa.dicom", rows=40, cols=30)
    _dicom(tmp_path / "train/bbb.dicom", rows=20, cols=20)
    csv = tmp_path / "train.csv"
    csv.write_text("\n".join([
        HEADER,
        "aaa,Cardiomegaly,3,R1,5.0,10.0,15.0,20.0",
        "aaa,Cardiomegaly,3,R2,10.0,15.0,20.5,25.2",
        "aaa,Nodule/Mass,8,R2,0,0,2,2",
        "aaa,No finding,14,R3,,,,",
        "bbb,No finding,14,R1,,,,",
        "bbb,No finding,14,R2,,,,",
    ]) + "\n")
    data = VindrDataset(csv)
    assert data.table["image_id"].tolist() == ["aaa", "bbb"]
    assert data.table["n_readers"].tolist() == [3, 2]
    cardio = VINDR_PATHOLOGIES.index("Cardiomegaly")
    nodule = VINDR_PATHOLOGIES.index("Nodule/Mass")
    assert data.raw_labels[0, cardio] == 1 and data.raw_labels[0, nodule] == 1
    assert data.raw_labels[0].sum() == 2 and data.raw_labels[1].sum() == 0
    mask = data.mask(0, "Cardiomegaly")
    assert mask.shape == (40, 30)
    expected = np.zeros((40, 30), bool)
    expected[10:20, 5:15] = True
    expected[15:26, 10:21] = True  # 25.2 -> ceil 26, 20.5 -> ceil 21
    np.testing.assert_array_equal(mask, expected)
    assert data.mask(0).sum() == expected.sum() + 4
    assert data.mask(1).shape == (20, 20) and not data.mask(1).any()
    assert data.image(1).pixels.shape == (20, 20)


def test_bad_rows(tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_text("\n".join([HEADER, "aaa,Cardiomegaly,3,R1,5,10,15,20",
                              "aaa,Heart attack,3,R1,5,10,15,20",
                              "bbb,Atelectasis,1,R1,5,x,15,20",
                              "ccc,Atelectasis,1,R1,15,10,5,20"]) + "\n")
    with pytest.raises(LabelValueError, match=r"train\.csv:3.*'Heart attack'"):
        VindrDataset(csv, check_files=False)
    data = VindrDataset(csv, check_files=False, on_error="skip")
    assert data.table["image_id"].tolist() == ["aaa"]
    assert data.skips.count == 3
    assert isinstance(data.skips.skipped[1], CSVFormatError)
    assert "train.csv:4" in str(data.skips.skipped[1])
    # no images at all: a skip that skips every row is an error (issue 17, item 7)
    with pytest.raises(LabelValueError, match=r"every row was skipped \(4 in all"):
        VindrDataset(csv, on_error="skip")
    clean = tmp_path / "clean.csv"
    clean.write_text(f"{HEADER}\nzzz,No finding,14,R1,,,,\naaa,Cardiomegaly,3,R1,5,10,15,20\n")
    with pytest.raises(MissingFileError, match=r"clean\.csv:2.*zzz"):
        VindrDataset(clean)
