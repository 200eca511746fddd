"""SYNTHETIC knee phantoms read back by the MRNet-v1.0 adapter, the exam CSV and the DICOM reader."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cxrlab.data.datasets.mrnet import mrnet_stats, open_exam_csv, open_mrnet, read_exam
from cxrlab.data.synthetic_knee import FLUID, LIGAMENT, knee_labels, write_dicom_exam, write_mrnet_phantoms
from cxrlab.errors import ConfigError, CSVFormatError, ExamError, LabelValueError, VolumeError


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    return write_mrnet_phantoms(tmp_path_factory.mktemp("knees") / "MRNet-v1.0", 6, 3, grid=32, seed=3,
                                slices=(5, 9))


def test_layout_and_labels_read_back(phantoms):
    train = open_mrnet(phantoms.parent, "train")
    valid = open_mrnet(phantoms, "valid")
    assert train.ids == ["0000", "0001", "0002", "0003", "0004", "0005"]
    assert valid.ids == ["0006", "0007", "0008"]            # numbered on, as MRNet's 1130..1249
    assert (phantoms / "train-acl.csv").read_text().splitlines()[0] in ("0000,0", "0000,1")
    manifest = json.loads((phantoms / "synthetic_manifest.json").read_text())
    for k, record in enumerate(r for r in manifest["exams"] if r["split"] == "train"):
        expected = [float(bool(record["findings"])), float("acl" in record["findings"]),
                    float("meniscus" in record["findings"])]
        assert train.labels[k].tolist() == expected
    volumes = train.volumes(0)
    assert set(volumes) == {"axial", "coronal", "sagittal"}
    for plane, volume in volumes.items():
        assert volume.array.dtype == np.uint8 and volume.slice_shape == (32, 32)
        assert 5 <= volume.num_slices <= 9 and volume.plane == plane
    assert "SYNTHETIC" in (phantoms / "README.txt").read_text()


def test_stats_shape(phantoms):
    stats = mrnet_stats(phantoms)
    assert set(stats) == {"train", "valid"}
    labels = open_mrnet(phantoms, "train").labels
    assert stats["train"]["exams"] == 6
    assert [stats["train"][t] for t in ("abnormal", "acl", "meniscus")] == labels.sum(0).astype(int).tolist()
    for plane, (low, high) in stats["valid"]["slices"].items():
        assert 5 <= low <= high <= 9


def test_findings_change_the_anatomy():
    intact = knee_labels(np.random.default_rng(0), 48, ())
    torn = knee_labels(np.random.default_rng(0), 48, ("acl",))
    assert (torn == LIGAMENT).sum() < (intact == LIGAMENT).sum()
    assert (torn == FLUID).sum() > (intact == FLUID).sum()
    with pytest.raises(ConfigError, match="unknown finding"):
        knee_labels(np.random.default_rng(0), 32, ("fracture",))


def _copy(phantoms, tmp_path):
    import shutil

    return shutil.copytree(phantoms, tmp_path / "MRNet-v1.0")


def test_plane_missing_and_skip_bad(phantoms, tmp_path):
    root = _copy(phantoms, tmp_path)
    (root / "train" / "coronal" / "0002.npy").unlink()
    with pytest.raises(ExamError, match=r"0002.*no coronal array"):
        open_mrnet(root, "train")
    ds = open_mrnet(root, "train", on_error="skip")
    assert len(ds) == 5 and ds.skips.count == 1 and "0002" not in ds.ids
    assert mrnet_stats(root, on_error="skip")["train"]["skipped"] == 1


def test_label_row_without_array(phantoms, tmp_path):
    root = _copy(phantoms, tmp_path)
    for task in ("abnormal", "acl", "meniscus"):
        with (root / f"valid-{task}.csv").open("a") as fh:
            fh.write("0042,1\n")
    with pytest.raises(ExamError, match="0042 has a label row but no axial array"):
        open_mrnet(root, "valid")


def test_slice_of_another_size(phantoms, tmp_path):
    root = _copy(phantoms, tmp_path)
    np.save(root / "train" / "sagittal" / "0004.npy", np.zeros((7, 30, 32), np.uint8))
    with pytest.raises(VolumeError, match=r"exam 0004, sagittal: slices are 30 x 32, expected 32 x 32"):
        open_mrnet(root, "train")


def test_bad_label_rows(phantoms, tmp_path):
    root = _copy(phantoms, tmp_path)
    (root / "train-acl.csv").write_text("0000,1\n0001,2\n")
    with pytest.raises(LabelValueError, match=r"train-acl.csv:2.*'2'"):
        open_mrnet(root, "train")
    (root / "train-acl.csv").write_text("0,1\n")
    with pytest.raises(CSVFormatError, match="4-digit"):
        open_mrnet(root, "train")


def test_dicom_exam_and_generic_csv(phantoms, tmp_path):
    train = open_mrnet(phantoms, "train")
    arrays = {p: v.array for p, v in train.volumes(1).items()}
    write_dicom_exam(arrays, tmp_path / "knee1", "knee1")
    exam_id, volumes = read_exam(tmp_path / "knee1")
    assert exam_id == "knee1"
    for plane, volume in volumes.items():
        np.testing.assert_array_equal(volume.array, arrays[plane].astype(np.float32))   # ordered by position
        assert volume.spacing == pytest.approx((3.0, 0.5, 0.5))
    _, by_id = read_exam("0001", root=phantoms)
    np.testing.assert_array_equal(by_id["axial"].array, arrays["axial"])
    csv = tmp_path / "exams.csv"
    csv.write_text("id,axial,coronal,sagittal,acl\n"
                   f"knee1,knee1/axial,knee1/coronal,knee1/sagittal,1\n"
                   f"k2,{phantoms}/train/axial/0000.npy,{phantoms}/train/coronal/0000.npy,"
                   f"{phantoms}/train/sagittal/0000.npy,\n"
                   "k3,missing.npy,missing.npy,missing.npy,0\n")
    with pytest.raises(ExamError, match="k3, axial"):
        open_exam_csv(csv)
    ds = open_exam_csv(csv, on_error="skip")
    assert ds.ids == ["knee1", "k2"] and ds.skips.count == 1
    assert ds.labels[0, 1] == 1.0 and math.isnan(ds.labels[1, 1]) and math.isnan(ds.labels[0, 0])
    assert ds.volumes(0)["sagittal"].num_slices == arrays["sagittal"].shape[0]


def test_acl_tear_shows_in_every_sagittal_series_at_the_demo_size():
    """At 48 px the torn ligament's fluid spans more than a sagittal slice spacing of 8 slices."""
    from cxrlab.data.synthetic_knee import _AXIS

    positions = np.round(np.linspace(0.1, 0.9, 8) * 47).astype(int)
    for seed in range(5):
        changed = knee_labels(np.random.default_rng(seed), 48, ("acl",)) != knee_labels(
            np.random.default_rng(seed), 48, ())
        assert max(int(np.take(changed, p, axis=_AXIS["sagittal"]).sum()) for p in positions) >= 10, seed


def test_tune_split_is_stratified_per_task():
    from cxrlab.tasks.mrnet.data import stratified_tune_split

    rng = np.random.default_rng(0)
    labels = np.zeros((60, 3))
    labels[:, 1] = rng.random(60) < 0.4
    labels[:, 2] = rng.random(60) < 0.4
    labels[:, 0] = (labels[:, 1] + labels[:, 2] + (rng.random(60) < 0.3)) > 0
    labels[:3, 0] = 0                       # only a few normal exams (as in the demo phantoms)
    labels[3:, 0] = 1
    labels[5, 2] = np.nan                   # an unknown label joins its own group
    for seed in range(5):
        tune, fit = stratified_tune_split(labels, 0.2, seed)
        assert not set(tune) & set(fit) and sorted(tune + fit) == list(range(60))
        assert 10 <= len(tune) <= 14
        for k in range(3):
            assert set(labels[tune, k][~np.isnan(labels[tune, k])]) == {0.0, 1.0}, (seed, k)
            assert set(labels[fit, k][~np.isnan(labels[fit, k])]) == {0.0, 1.0}, (seed, k)
    assert stratified_tune_split(labels, 0.2, 1) == stratified_tune_split(labels, 0.2, 1)
    one_normal = labels.copy()
    one_normal[:3, 0] = [0, 1, 1]
    with pytest.raises(ConfigError, match="abnormal=0: too few"):
        stratified_tune_split(one_normal, 0.2, 0)
    with pytest.raises(ConfigError, match="no tune"):
        stratified_tune_split(labels, 0.001, 0)
