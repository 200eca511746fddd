"""MIMIC-CXR-JPG adapter on hand-made metadata / chexpert / split CSVs."""

from __future__ import annotations

import gzip
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrlab.data.datasets.chexpert import CHEXPERT_PATHOLOGIES
from cxrlab.data.datasets.mimic import MimicDataset
from cxrlab.errors import CSVFormatError, LabelValueError, MissingFileError

LABEL_COLUMNS = sorted(CHEXPERT_PATHOLOGIES)  # MIMIC orders them alphabetically
EDEMA = CHEXPERT_PATHOLOGIES.index("Edema")
EFFUSION = CHEXPERT_PATHOLOGIES.index("Pleural Effusion")


def _labels(**values: str) -> str:
    return ",".join(values.get(c.replace(" ", "_"), "") for c in LABEL_COLUMNS)


def _write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


@pytest.fixture()
def mimic(tmp_path: Path) -> dict[str, Path]:
    meta = _write(tmp_path / "mimic-cxr-2.0.0-metadata.csv.gz", "\n".join([
        "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns",
        "d1,10000032,50414267,CHEST (PA AND LAT),PA,3056,2544",
        "d2,10000032,50414267,CHEST (PA AND LAT),LATERAL,3056,2544",
        "d3,10000032,53189527,CHEST (PORTABLE AP),AP,3056,2544",
        "d4,11000011,51000001,CHEST,,3056,2544",
    ]) + "\n")
    labels = _write(tmp_path / "mimic-cxr-2.0.0-chexpert.csv.gz", "\n".join([
        "subject_id,study_id," + ",".join(LABEL_COLUMNS),
        "10000032,50414267," + _labels(Edema="1.0", Pleural_Effusion="-1.0"),
        "10000032,53189527," + _labels(Edema="0.0"),
    ]) + "\n")
    split = _write(tmp_path / "mimic-cxr-2.0.0-split.csv", "\n".join([
        "dicom_id,study_id,subject_id,split", "d1,50414267,10000032,train",
        "d2,50414267,10000032,train", "d3,53189527,10000032,validate"]) + "\n")
    return {"metadata_csv": meta, "chexpert_csv": labels, "split_csv": split}


def test_join_labels_views_split(mimic, tmp_path):
    data = MimicDataset(**mimic, check_files=False)
    table = data.table
    assert table["patient_id"].tolist() == ["10000032"] * 3 + ["11000011"]
    assert table["study_id"].tolist() == ["50414267", "50414267", "53189527", "51000001"]
    assert table["view"].tolist() == ["PA", "LATERAL", "AP", ""]
    assert table["frontal"].tolist() == [True, False, True, False]
    assert table["split"].tolist() == ["train", "train", "valid", ""]
    assert table["path"].iat[0] == str(tmp_path.resolve() / "files/p10/p10000032/s50414267/d1.jpg")
    assert data.raw_labels[:3, EDEMA].tolist() == [1.0, 1.0, 0.0]
    assert data.raw_labels[0, EFFUSION] == -1.0
    assert np.isnan(data.raw_labels[3]).all()  # study without a label row
    assert np.isnan(data.labels[0, EFFUSION])  # ignore policy by default
    ones = MimicDataset(**mimic, check_files=False, policy=["Pleural Effusion=ones"])
    assert ones.labels[0, EFFUSION] == 1.0
    studies, study_labels = data.study_labels()
    assert studies.tolist() == ["50414267", "53189527", "51000001"]
    assert study_labels[:, EDEMA].tolist()[:2] == [1.0, 0.0]


def test_files_checked_and_read(mimic, tmp_path):
    with pytest.raises(MissingFileError, match=r"metadata\.csv\.gz:2.*d1\.jpg"):
        MimicDataset(**mimic)
    image = tmp_path / "files/p10/p10000032/s50414267/d1.jpg"
    image.parent.mkdir(parents=True)
    cv2.imwrite(str(image), np.full((12, 10), 77, np.uint8))
    data = MimicDataset(**mimic, on_error="skip")
    assert data.table["dicom_id"].tolist() == ["d1"] and data.skips.count == 3
    assert data.image(0).pixels.shape == (12, 10)


def test_bad_label_and_bad_id(mimic, tmp_path):
    labels = mimic["chexpert_csv"]
    text = gzip.decompress(labels.read_bytes()).decode().replace("0.0", "maybe")
    _write(labels, text)
    with pytest.raises(LabelValueError, match=r"chexpert\.csv\.gz:3.*'Edema'.*'maybe'"):
        MimicDataset(**mimic, check_files=False)
    data = MimicDataset(**mimic, check_files=False, on_error="skip")
    assert "53189527" not in set(data.table["study_id"])  # its images go with the label row
    assert len(data) == 3 and data.skips.count == 1



def test_bad_id_and_missing_column(mimic, tmp_path):
    bad_meta = _write(tmp_path / "meta.csv", "dicom_id,subject_id,study_id,ViewPosition\n"
                                             "d9,abc,123,PA\n")
    with pytest.raises(CSVFormatError, match=r"meta\.csv:2.*not a number"):
        MimicDataset(bad_meta, mimic["chexpert_csv"], check_files=False)
    bad = _write(tmp_path / "meta.csv", "dicom_id,study_id\nd1,1\n")
    with pytest.raises(CSVFormatError, match="'subject_id'"):
        MimicDataset(bad, mimic["chexpert_csv"])
