"""Kermany / Mendeley pediatric pneumonia folder adapter on a tiny folder tree."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrlab.data.datasets import load_dataset
from cxrlab.data.datasets.folder import FolderDataset, patient_from_name
from cxrlab.data.splits import patient_split
from cxrlab.errors import MissingFileError

FILES = [
    "train/NORMAL/IM-0115-0001.jpeg",
    "train/NORMAL/IM-0115-0002.jpeg",
    "train/NORMAL/NORMAL2-IM-1427-0001.jpeg",
    "train/PNEUMONIA/person1_bacteria_1.jpeg",
    "train/PNEUMONIA/person1_virus_6.jpeg",
    "val/PNEUMONIA/person1946_bacteria_4874.jpeg",
    "test/NORMAL/IM-0001-0001.jpeg",
    "test/PNEUMONIA/person100_virus_184.jpeg",
    "test/PNEUMONIA/unlabelled.jpeg",
]


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    for name in FILES:
        path = tmp_path / "chest_xray" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.full((10, 14), 120, np.uint8))
    (tmp_path / "chest_xray/train/NORMAL/.DS_Store").write_text("junk")
    (tmp_path / "chest_xray/__MACOSX").mkdir()
    return tmp_path / "chest_xray"


def test_labels_patients_splits(tree):
    data = FolderDataset(tree)
    table = data.table.set_index(data.table["path"].map(lambda p: Path(p).name))
    assert len(data) == len(FILES)
    assert data.pathologies == ["Pneumonia"]
    labels = dict(zip(table.index, data.raw_labels[:, 0]))
    assert labels["IM-0115-0001.jpeg"] == 0 and labels["person1_virus_6.jpeg"] == 1
    assert data.label_counts() == {"Pneumonia": {"n": 9, "positive": 5, "negative": 4}}
    assert table.at["IM-0115-0002.jpeg", "patient_id"] == "IM-0115"
    assert table.at["NORMAL2-IM-1427-0001.jpeg", "patient_id"] == "NORMAL2-IM-1427"
    assert table.at["person1_virus_6.jpeg", "patient_id"] == "person1"
    assert table.at["unlabelled.jpeg", "patient_id"] == "unlabelled"
    assert table.at["person1946_bacteria_4874.jpeg", "split"] == "valid"
    assert table.at["IM-0001-0001.jpeg", "split"] == "test"
    assert table["frontal"].all()
    assert table.at["person1_bacteria_1.jpeg", "study_id"] == "train/PNEUMONIA/person1_bacteria_1"
    assert data.image(0).pixels.shape == (10, 14)
    # person1's two images stay together in a patient split.
    parts = patient_split(data.table["patient_id"].to_numpy(), {"a": 0.5, "b": 0.5}, seed=0)
    person1 = set(np.flatnonzero(data.table["patient_id"] == "person1"))
    assert any(person1 <= set(idx) for idx in parts.values())


def test_subtypes(tree):
    data = load_dataset("folder", root=tree, subtypes=True)
    assert data.pathologies == ["Pneumonia", "Bacterial", "Viral"]
    by_name = {Path(p).name: row for p, row in zip(data.table["path"], data.raw_labels)}
    np.testing.assert_array_equal(by_name["person1_bacteria_1.jpeg"], [1, 1, 0])
    np.testing.assert_array_equal(by_name["person100_virus_184.jpeg"], [1, 0, 1])
    np.testing.assert_array_equal(by_name["IM-0115-0001.jpeg"], [0, 0, 0])
    assert np.isnan(by_name["unlabelled.jpeg"][1:]).all()


def test_flat_root_and_errors(tmp_path):
    for name in ["NORMAL/IM-0001-0001.png", "PNEUMONIA/person3_virus_1.png"]:
        path = tmp_path / "flat" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.zeros((4, 4), np.uint8))
    data = FolderDataset(tmp_path / "flat")
    assert data.table["split"].tolist() == ["", ""]
    assert data.raw_labels[:, 0].tolist() == [0.0, 1.0]
    with pytest.raises(MissingFileError, match="does not exist"):
        FolderDataset(tmp_path / "nope")
    (tmp_path / "empty/train").mkdir(parents=True)
    with pytest.raises(MissingFileError, match="NORMAL"):
        FolderDataset(tmp_path / "empty")


def test_patient_from_name():
    assert patient_from_name("person1946_bacteria_4874") == "person1946"
    assert patient_from_name("NORMAL2-IM-0588-0001") == "NORMAL2-IM-0588"
    assert patient_from_name("IM-0115-0001") == "IM-0115"
    assert patient_from_name("scan") == "scan"
