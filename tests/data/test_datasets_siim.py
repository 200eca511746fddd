"""SIIM-ACR adapter: tiny DICOMs written with pydicom plus a Kaggle-style RLE CSV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from cxrlab.data.datasets import load_dataset
from cxrlab.data.datasets.siim import SiimDataset
from cxrlab.errors import CSVFormatError, MissingFileError
from cxrlab.io.rle import rle_encode

SOP_A = "1.2.276.0.7230010.3.1.4.1"
SOP_B = "1.2.276.0.7230010.3.1.4.2"
SOP_C = "1.2.276.0.7230010.3.1.4.3"


def _dicom(path: Path, sop: str, patient: str, rows: int = 8, cols: int = 6) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, sop
    ds.PatientID, ds.StudyInstanceUID, ds.ViewPosition = patient, sop + ".9", "PA"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.arange(rows * cols, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _region(rows: int, cols: int, r0: int, r1: int, c0: int, c1: int) -> tuple[np.ndarray, str]:
    mask = np.zeros((rows, cols), bool)
    mask[r0:r1, c0:c1] = True
    return mask, rle_encode(mask)


@pytest.fixture()
def siim_tree(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    _dicom(tmp_path / "dicom-images-train/s1/x1" / f"{SOP_A}.dcm", SOP_A, "patient-7")
    _dicom(tmp_path / "dicom-images-train/s2/x2" / f"{SOP_B}.dcm", SOP_B, "patient-7", 10, 4)
    first, rle1 = _region(8, 6, 1, 3, 1, 2)
    second, rle2 = _region(8, 6, 5, 8, 4, 6)
    csv = tmp_path / "train-rle.csv"
    csv.write_text(f"ImageId, EncodedPixels\n{SOP_A}, {rle1}\n{SOP_B}, -1\n{SOP_A}, {rle2}\n")
    return csv, first, second


def test_masks_are_unioned_and_headers_read(siim_tree):
    csv, first, second = siim_tree
    data = SiimDataset(csv)
    assert data.table["image_id"].tolist() == [SOP_A, SOP_B]
    assert data.raw_labels[:, 0].tolist() == [1.0, 0.0]
    assert data.table["patient_id"].tolist() == ["patient-7", "patient-7"]
    assert data.table["study_id"].tolist() == [SOP_A + ".9", SOP_B + ".9"]
    assert data.table["view"].tolist() == ["PA", "PA"]
    assert data.table[["rows", "cols"]].to_numpy().tolist() == [[8, 6], [10, 4]]
    np.testing.assert_array_equal(data.mask(0), first | second)
    np.testing.assert_array_equal(data.mask(0, "Pneumothorax"), first | second)
    empty = data.mask(1)
    assert empty.shape == (10, 4) and not empty.any()
    assert data.has_masks()
    assert data.image(0).pixels.shape == (8, 6)


def test_missing_dicom_and_unlisted_dicom(siim_tree):
    csv, _, _ = siim_tree
    with open(csv, "a") as handle:
        handle.write(f"{SOP_C}, -1\n")
    with pytest.raises(MissingFileError, match=SOP_C):
        SiimDataset(csv)
    data = SiimDataset(csv, on_error="skip")
    assert data.table["image_id"].tolist() == [SOP_A, SOP_B] and data.skips.count == 1
    unchecked = SiimDataset(csv, check_files=False)
    assert unchecked.table["image_id"].tolist() == [SOP_A, SOP_B, SOP_C]
    assert unchecked.table["patient_id"].iat[2] == SOP_C  # no file: id stands in
    assert unchecked.mask(2).shape == (1024, 1024)

    _dicom(csv.parent / "dicom-images-train/extra" / "1.2.3.dcm", "1.2.3", "p9")
    only_listed = csv.parent / "listed.csv"
    only_listed.write_text(f"ImageId, EncodedPixels\n{SOP_A}, -1\n{SOP_B}, -1\n")
    with pytest.raises(CSVFormatError, match=r"no row for DICOM .*1\.2\.3\.dcm"):
        SiimDataset(only_listed)
    data = SiimDataset(only_listed, on_error="skip")
    assert len(data) == 2 and data.skips.count == 1


def test_default_root_is_kaggle_train_folder(siim_tree):
    csv, _, _ = siim_tree
    _dicom(csv.parent / "dicom-images-test/t/t" / "1.2.3.dcm", "1.2.3", "p9")  # unlabelled
    data = SiimDataset(csv)  # would fail on the test DICOM if it searched the CSV's folder
    assert data.root == str((csv.parent / "dicom-images-train").resolve())
    assert len(data) == 2 and data.skips.count == 0


def test_real_label_only_csv(xrv_data):
    csv = xrv_data / "siim-pneumothorax-train-rle.csv.gz"
    data = load_dataset("siim", rle_csv=csv, check_files=False)
    raw = pd.read_csv(csv)
    raw.columns = [c.strip() for c in raw.columns]
    raw["positive"] = raw["EncodedPixels"].str.strip() != "-1"
    per_image = raw.groupby("ImageId")["positive"].any()
    assert len(data) == len(per_image) == 12047
    assert int(data.raw_labels.sum()) == int(per_image.sum()) == 2669
    several = raw["ImageId"].value_counts()
    image = several.index[0]
    assert several.iloc[0] > 1
    row = int(np.flatnonzero(data.table["image_id"] == image)[0])
    assert data.mask(row).shape == (1024, 1024) and data.mask(row).any()
