"""Generic CSV adapter (hospital data): labels, masks, weak flags, splits, bad input."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrlab.data.datasets import DATASETS, load_dataset
from cxrlab.data.datasets.generic import GenericDataset
from cxrlab.errors import ConfigError, CSVFormatError, LabelValueError, MissingFileError

HEADER = "file,Effusion,Nodule,lesion_mask,pid,sid,view,weak,part"
OPTIONS = dict(path_col="file", label_cols=["Effusion", "Nodule"], mask_col="lesion_mask",
               patient_col="pid", study_col="sid", view_col="view", weak_col="weak",
               split_col="part")


def _images(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        cv2.imwrite(str(root / f"img{i}.png"), np.full((6, 5), 50 * i, np.uint8))
    mask = np.zeros((6, 5), np.uint8)
    mask[1:3, 2:4] = 255
    cv2.imwrite(str(root / "mask0.png"), mask)


def _csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path


@pytest.fixture()
def hospital(tmp_path: Path) -> Path:
    _images(tmp_path / "imgs")
    return _csv(tmp_path / "labels.csv", [
        "imgs/img0.png,1,0,imgs/mask0.png,P1,S1,PA,0,train",
        "imgs/img1.png,-1,,,P1,S1,lateral,1,train",
        "imgs/img2.png,0,1,,P2,S2,,yes,val",
    ])


def test_columns_labels_masks(hospital, tmp_path):
    data = GenericDataset(hospital, **OPTIONS, policy=["Effusion=ones"])
    table = data.table
    assert data.pathologies == ["Effusion", "Nodule"]
    assert table["path"].iat[0] == str(tmp_path.resolve() / "imgs/img0.png")
    assert table["patient_id"].tolist() == ["P1", "P1", "P2"]
    assert table["study_id"].tolist() == ["S1", "S1", "S2"]
    assert table["view"].tolist() == ["PA", "LATERAL", ""]
    assert table["frontal"].tolist() == [True, False, True]
    assert table["weak"].tolist() == [False, True, True]
    assert table["split"].tolist() == ["train", "train", "valid"]
    np.testing.assert_array_equal(data.raw_labels, [[1, 0], [-1, np.nan], [0, 1]])
    np.testing.assert_array_equal(data.labels, [[1, 0], [1, np.nan], [0, 1]])
    assert data.has_masks()
    mask = data.mask(0)
    assert mask.dtype == bool and mask.shape == (6, 5) and mask.sum() == 4
    assert data.mask(1) is None
    studies, labels = data.study_labels()
    assert studies.tolist() == ["S1", "S2"]
    np.testing.assert_array_equal(labels, [[1, 0], [0, 1]])
    assert len(data.filter_views(frontal=True)) == 2


def test_minimal_columns(tmp_path):
    _images(tmp_path)
    csv = tmp_path / "m.csv"
    csv.write_text("path,A\nimg0.png,1\nimg1.png,\n")
    data = load_dataset("generic", csv=csv, label_cols=["A"])
    assert data.table["patient_id"].tolist() == ["img0.png", "img1.png"]
    assert data.table["frontal"].all() and not data.has_masks() and data.mask(0) is None
    assert "generic" in DATASETS


@pytest.mark.parametrize("row, error, words", [
    ("imgs/img2.png,2,0,,P3,S3,PA,0,train", LabelValueError, r"labels\.csv:4.*'Effusion'.*'2'"),
    ("imgs/img2.png,1,0,,P3,S3,PA,maybe,train", LabelValueError, r"labels\.csv:4.*'weak'"),
    ("imgs/img2.png,1,0,,P3,S3,PA,0,holdout", LabelValueError, r"labels\.csv:4.*'part'"),
    ("imgs/none.png,1,0,,P3,S3,PA,0,train", MissingFileError, r"labels\.csv:4.*none\.png"),
    ("imgs/img2.png,1,0,imgs/nomask.png,P3,S3,PA,0,train", MissingFileError,
     r"labels\.csv:4.*mask .*nomask\.png"),
])
def test_bad_rows(tmp_path, row, error, words):
    _images(tmp_path / "imgs")
    csv = _csv(tmp_path / "labels.csv", ["imgs/img0.png,1,0,,P1,S1,PA,0,train",
                                         "imgs/img1.png,0,0,,P2,S2,PA,0,train", row])
    with pytest.raises(error, match=words):
        GenericDataset(csv, **OPTIONS)
    data = GenericDataset(csv, **OPTIONS, on_error="skip")
    assert len(data) == 2 and data.skips.count == 1


def test_configuration_errors(hospital):
    with pytest.raises(ConfigError, match="label column"):
        GenericDataset(hospital, path_col="file")
    with pytest.raises(ConfigError, match="named twice"):
        GenericDataset(hospital, path_col="file", label_cols=["Effusion", "Effusion"])
    with pytest.raises(CSVFormatError, match="'Pneumonia'"):
        GenericDataset(hospital, path_col="file", label_cols=["Pneumonia"])
