"""Synthetic datasets in the real layouts: files, headers, determinism, and read-back by
every adapter (labels and masks must agree with what was generated)."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from cxrlab.data.datasets import load_dataset
from cxrlab.data.synthetic_layouts import (LAYOUTS, MANIFEST, manifest_phantom, mask_boxes,
                                           read_manifest, write_dataset)
from cxrlab.errors import ConfigError
from cxrlab.io import read_mask

N, SIZE, SEED = 16, 64, 5
CHEXPERT_HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,"
                   "Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,"
                   "Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,"
                   "Support Devices")
CHEXPERT_OF = {"cardiomegaly": "Cardiomegaly", "effusion": "Pleural Effusion",
               "pneumothorax": "Pneumothorax", "consolidation": "Consolidation",
               "edema": "Edema", "atelectasis": "Atelectasis", "nodule": "Lung Lesion"}
NIH_OF = {"cardiomegaly": "Cardiomegaly", "effusion": "Effusion", "pneumothorax": "Pneumothorax",
          "consolidation": "Consolidation", "edema": "Edema", "atelectasis": "Atelectasis",
          "nodule": "Nodule", "infiltrates": "Infiltration"}
VINDR_OF = {"cardiomegaly": "Cardiomegaly", "effusion": "Pleural effusion",
            "pneumothorax": "Pneumothorax", "consolidation": "Consolidation",
            "edema": "Lung Opacity", "atelectasis": "Atelectasis", "nodule": "Nodule/Mass",
            "infiltrates": "Infiltration"}
GENERIC_LABELS = ["Cardiomegaly", "Effusion", "Pneumothorax", "Consolidation", "Edema",
                  "Atelectasis", "Nodule", "Infiltrates"]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    """Every layout written once (n=16, 64 px) for the read-only tests of this module."""
    root = tmp_path_factory.mktemp("synth")
    return {layout: write_dataset(layout, root / layout, N, SIZE, SEED) for layout in LAYOUTS}


def records_by(manifest: dict, key: str = "path") -> dict[str, dict]:
    return {r[key]: r for r in manifest["images"]}


def rel(path: str, root: Path) -> str:
    return Path(path).resolve().relative_to(root.resolve()).as_posix()


# ---------------------------------------------------------------------------- files
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_is_named_synthetic_and_counts_add_up(datasets, layout):
    out = datasets[layout]
    assert "SYNTHETIC PHANTOM DATA — not real patients" in (out / "README.txt").read_text(
        encoding="utf-8")
    manifest = read_manifest(out)
    assert manifest["layout"] == layout and len(manifest["images"]) == N
    assert [r["index"] for r in manifest["images"]] == list(range(N))
    for record in manifest["images"]:
        assert (out / record["path"]).is_file(), record["path"]
    counts = manifest["counts"]
    for finding, count in counts.items():
        expected = sum((not r["findings"]) if finding == "normal" else finding in r["findings"]
                       for r in manifest["images"])
        assert count == expected
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{layout}.")]


def test_chexpert_files(datasets):
    base = datasets["chexpert"] / "CheXpert-v1.0-small"
    for name in ("train.csv", "valid.csv"):
        lines = (base / name).read_text().splitlines()
        assert lines[0] == CHEXPERT_HEADER
        for line in lines[1:]:
            cells = line.split(",")
            assert re.fullmatch(r"CheXpert-v1\.0-small/(train|valid)/patient\d{5}/study\d+/"
                                r"view[12]_frontal\.jpg", cells[0])
            assert (datasets["chexpert"] / cells[0]).read_bytes()[:2] == b"\xff\xd8"  # JPEG
            assert cells[3] == "Frontal" and cells[4] in ("AP", "PA")
            assert set(cells[5:]) <= {"1.0", "0.0", "-1.0", ""}
            if name == "valid.csv":
                assert set(cells[5:]) <= {"1.0", "0.0"}
    train = pd.read_csv(base / "train.csv")
    assert train["Path"].str.contains("view2_frontal").any()            # a two-view study
    assert train.isna().any().any() and (train == -1.0).any().any()     # blanks, uncertain


def test_mimic_files(datasets):
    out = datasets["mimic"]
    meta = pd.read_csv(out / "mimic-cxr-2.0.0-metadata.csv.gz", dtype=str)
    labels = pd.read_csv(out / "mimic-cxr-2.0.0-chexpert.csv.gz")
    split = pd.read_csv(out / "mimic-cxr-2.0.0-split.csv.gz", dtype=str)
    assert list(meta.columns[:7]) == ["dicom_id", "subject_id", "study_id",
                                      "PerformedProcedureStepDescription", "ViewPosition",
                                      "Rows", "Columns"]
    assert list(labels.columns) == ["subject_id", "study_id", "Atelectasis", "Cardiomegaly",
                                    "Consolidation", "Edema", "Enlarged Cardiomediastinum",
                                    "Fracture", "Lung Lesion", "Lung Opacity", "No Finding",
                                    "Pleural Effusion", "Pleural Other", "Pneumonia",
                                    "Pneumothorax", "Support Devices"]
    assert list(split.columns) == ["dicom_id", "study_id", "subject_id", "split"]
    assert set(split["split"]) <= {"train", "validate", "test"}
    assert (meta["Rows"] == str(SIZE)).all()
    for row in meta.itertuples():
        assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}", row.dicom_id)
        assert re.fullmatch(r"1\d{7}", row.subject_id) and re.fullmatch(r"5\d{7}", row.study_id)
        path = out / f"files/p{row.subject_id[:2]}/p{row.subject_id}/s{row.study_id}"
        assert (path / f"{row.dicom_id}.jpg").is_file()
    with gzip.open(out / "mimic-cxr-2.0.0-split.csv.gz", "rb") as handle:
        assert handle.read(9) == b"dicom_id,"


def test_siim_files(datasets):
    out = datasets["siim"]
    lines = (out / "train-rle.csv").read_text().splitlines()
    assert lines[0] == "ImageId, EncodedPixels"
    ids = [line.split(",")[0] for line in lines[1:]]
    assert len(set(ids)) == N and len(ids) > N                           # a split mask
    files = sorted((out / "dicom-images-train").glob("*/*/*.dcm"))
    assert len(files) == N
    ds = pydicom.dcmread(files[0])
    assert str(ds.PatientName) == "SYNTHETIC^PHANTOM"
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsStored == 8
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert files[0].stem == ds.SOPInstanceUID and ds.SOPInstanceUID in ids
    assert files[0].parent.name == ds.SeriesInstanceUID
    assert files[0].parent.parent.name == ds.StudyInstanceUID
    assert ds.ViewPosition in ("PA", "AP") and ds.PatientID


def test_nih_files(datasets):
    out = datasets["nih"]
    entry = (out / "Data_Entry_2017.csv").read_text().splitlines()
    assert entry[0] == ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,"
                        "Patient Gender,View Position,OriginalImage[Width,Height],"
                        "OriginalImagePixelSpacing[x,y]")
    assert (out / "BBox_List_2017.csv").read_text().splitlines()[0] == \
        "Image Index,Finding Label,Bbox [x,y,w,h],,,"
    names = [line.split(",")[0] for line in entry[1:]]
    assert all(re.fullmatch(r"\d{8}_\d{3}\.png", n) and (out / "images" / n).is_file()
               for n in names)
    train = (out / "train_val_list.txt").read_text().split()
    test = (out / "test_list.txt").read_text().split()
    assert sorted(train + test) == sorted(names) and train and test
    assert not {n[:8] for n in train} & {n[:8] for n in test}           # split by patient


def test_folder_files(datasets):
    root = datasets["folder"] / "chest_xray"
    for split in ("train", "val", "test"):
        for label in ("NORMAL", "PNEUMONIA"):
            files = list((root / split / label).glob("*.jpeg"))
            assert files, f"{split}/{label}"
            for f in files:
                pattern = (r"IM-\d{4}-\d{4}" if label == "NORMAL"
                           else r"person\d+_(bacteria|virus)_\d+")
                assert re.fullmatch(pattern, f.stem)


def test_vindr_files(datasets):
    out = datasets["vindr"]
    table = pd.read_csv(out / "train.csv", dtype=str, keep_default_na=False)
    assert list(table.columns) == ["image_id", "class_name", "class_id", "rad_id", "x_min",
                                   "y_min", "x_max", "y_max"]
    ids = {"Aortic enlargement": "0", "Atelectasis": "1", "Cardiomegaly": "3",
           "Consolidation": "4", "Infiltration": "6", "Lung Opacity": "7", "Nodule/Mass": "8",
           "Pleural effusion": "10", "Pneumothorax": "12", "No finding": "14"}
    assert all(ids[row.class_name] == row.class_id for row in table.itertuples())
    none = table[table["class_name"] == "No finding"]
    assert (none[["x_min", "y_min", "x_max", "y_max"]] == "").all().all()
    assert (table.groupby("image_id")["rad_id"].nunique() == 3).all()
    for image_id in table["image_id"].unique():
        assert re.fullmatch(r"[0-9a-f]{32}", image_id)
        assert (out / "train" / f"{image_id}.dicom").is_file()
    photometric = {pydicom.dcmread(p, stop_before_pixels=True).PhotometricInterpretation
                   for p in (out / "train").glob("*.dicom")}
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}


def test_generic_files(datasets):
    out = datasets["generic"]
    table = pd.read_csv(out / "labels.csv", dtype=str, keep_default_na=False)
    assert list(table.columns) == ["path", "patient_id", "study_id", "view", "split", "weak",
                                   "mask_path", *GENERIC_LABELS]
    hard = table["weak"] == "0"
    assert hard.any() and (~hard).any()
    assert (table.loc[hard, "mask_path"] != "").all() and (table.loc[~hard, "mask_path"] == "").all()
    assert all((out / p).is_file() for p in table["mask_path"] if p)
    assert set(table[GENERIC_LABELS].to_numpy().ravel()) == {"1", "0", ""}


# ---------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("layout", LAYOUTS)
def test_same_arguments_give_identical_files(tmp_path, layout):
    a = write_dataset(layout, tmp_path / "a", 6, 48, 3)
    b = write_dataset(layout, tmp_path / "b", 6, 48, 3)
    c = write_dataset(layout, tmp_path / "c", 6, 48, 4)
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    # another seed, other labels (the folder layout keeps its labels in the file names)
    labels = [f for f in files if f.endswith((".csv", ".csv.gz"))]
    assert labels or layout == "folder"
    other = sorted(p.relative_to(c).as_posix() for p in c.rglob("*") if p.is_file())
    assert other != files or any((a / f).read_bytes() != (c / f).read_bytes() for f in labels)


def test_refuses_to_overwrite(tmp_path):
    out = write_dataset("generic", tmp_path / "d", 4, 32, 0)
    with pytest.raises(ConfigError, match="not empty"):
        write_dataset("generic", out, 4, 32, 1)
    assert read_manifest(out)["seed"] == 0
    write_dataset("nih", out, 5, 32, 1, overwrite=True)
    assert read_manifest(out)["layout"] == "nih" and not (out / "labels.csv").exists()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.txt").write_text("precious")
    with pytest.raises(ConfigError, match=f"holds no {MANIFEST}"):
        write_dataset("generic", other, 4, 32, 0, overwrite=True)
    assert (other / "thesis.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "mine"]   # no temp leftovers


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="unknown layout"):
        write_dataset("padchest", tmp_path / "x", 4, 32, 0)
    with pytest.raises(ConfigError, match="radiologists"):
        write_dataset("vindr", tmp_path / "x", 4, 32, 0, radiologists=0)
    with pytest.raises(ConfigError, match="no option"):
        write_dataset("siim", tmp_path / "x", 4, 32, 0, weak_fraction=0.2)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        write_dataset("chexpert", tmp_path / "x", 4, 32, 0, prevalence=1.5)
    with pytest.raises(ConfigError, match="unknown finding"):
        write_dataset("chexpert", tmp_path / "x", 4, 32, 0, prevalence={"hernia": 0.2})
    assert not (tmp_path / "x").exists()


def test_prevalence_and_progress(tmp_path):
    calls = []
    out = write_dataset("generic", tmp_path / "g", 20, 32, 0, prevalence={"edema": 0.5},
                        progress=lambda done, total: calls.append((done, total)))
    counts = read_manifest(out)["counts"]
    assert counts["edema"] == 10 and counts["nodule"] == 6              # 0.3 * 20
    assert calls == [(k, 20) for k in range(1, 21)]
    out = write_dataset("siim", tmp_path / "s", 10, 32, 0, prevalence=0.5)
    assert read_manifest(out)["counts"]["pneumothorax"] == 5


# ---------------------------------------------------------------------------- read-back
def assert_chexpert_labels(raw: np.ndarray, pathologies: list[str], findings: list[str]):
    value = dict(zip(pathologies, raw))
    for finding, column in CHEXPERT_OF.items():
        if finding in findings:
            assert value[column] in (1.0, -1.0), (column, findings)
        else:
            assert value[column] == 0.0 or np.isnan(value[column]), (column, findings)
    opacity = bool({"consolidation", "edema", "atelectasis", "infiltrates"} & set(findings))
    assert (value["Lung Opacity"] in (1.0, -1.0)) == opacity
    assert (value["No Finding"] == 1.0) == (not findings)


def test_chexpert_read_back(datasets):
    out = datasets["chexpert"]
    records = records_by(read_manifest(out))
    seen = 0
    for split in ("train", "valid"):
        ds = load_dataset("chexpert", csv=out / "CheXpert-v1.0-small" / f"{split}.csv")
        for i, path in enumerate(ds.table["path"]):
            record = records[rel(path, out)]
            assert ds.table.at[i, "patient_id"] == record["patient"]
            assert ds.table.at[i, "study_id"] == record["study"]
            assert ds.table.at[i, "view"] == record["view"] and ds.table.at[i, "frontal"]
            assert_chexpert_labels(ds.raw_labels[i], ds.pathologies, record["findings"])
        if split == "valid":
            assert not np.isnan(ds.raw_labels).any() and not (ds.raw_labels == -1).any()
        else:
            studies, _ = ds.study_labels()
            assert len(studies) < len(ds)                                # 2-view studies merge
        seen += len(ds)
    assert seen == N
    image = ds.image(0).pixels
    expected = manifest_phantom(read_manifest(out), records[rel(ds.table.at[0, "path"], out)])
    assert np.abs(image - expected.image).mean() < 3                      # JPEG, quality 95


def test_mimic_read_back(datasets):
    out = datasets["mimic"]
    records = records_by(read_manifest(out), "dicom_id")
    ds = load_dataset("mimic", metadata_csv=out / "mimic-cxr-2.0.0-metadata.csv.gz",
                      chexpert_csv=out / "mimic-cxr-2.0.0-chexpert.csv.gz",
                      split_csv=out / "mimic-cxr-2.0.0-split.csv.gz")
    assert len(ds) == N
    splits = {"train": "train", "validate": "valid", "test": "test"}
    for i, row in ds.table.iterrows():
        record = records[row["dicom_id"]]
        assert rel(row["path"], out) == record["path"]
        assert (row["patient_id"], row["study_id"]) == (record["patient"], record["study"])
        assert row["split"] == splits[record["split"]] and row["view"] == record["view"]
        assert_chexpert_labels(ds.raw_labels[i], ds.pathologies, record["findings"])
    assert set(ds.table["split"]) == {"train", "valid", "test"}


def test_siim_read_back_masks_equal_generated(datasets):
    out = datasets["siim"]
    manifest = read_manifest(out)
    records = records_by(manifest)
    ds = load_dataset("siim", rle_csv=out / "train-rle.csv", root=out)
    assert len(ds) == N
    for i in range(len(ds)):
        record = records[rel(ds.table.at[i, "path"], out)]
        phantom = manifest_phantom(manifest, record)
        positive = "pneumothorax" in record["findings"]
        assert ds.raw_labels[i, 0] == float(positive)
        expected = phantom.masks.get("pneumothorax", np.zeros((SIZE, SIZE), bool))
        assert np.array_equal(ds.mask(i), expected)
        assert ds.table.at[i, "patient_id"] == record["patient"]
        assert np.array_equal(ds.image(i).pixels, phantom.image.astype(np.float32))


def test_nih_read_back_labels_and_boxes(datasets):
    out = datasets["nih"]
    manifest = read_manifest(out)
    records = records_by(manifest)
    ds = load_dataset("nih", data_entry_csv=out / "Data_Entry_2017.csv",
                      bbox_csv=out / "BBox_List_2017.csv",
                      train_list=out / "train_val_list.txt", test_list=out / "test_list.txt")
    assert len(ds) == N
    boxed = 0
    for i in range(len(ds)):
        record = records[rel(ds.table.at[i, "path"], out)]
        positives = {p for p, v in zip(ds.pathologies, ds.raw_labels[i]) if v == 1}
        assert positives == {NIH_OF[f] for f in record["findings"]}
        assert ds.table.at[i, "split"] == record["split"]
        phantom = manifest_phantom(manifest, record)
        for finding in record["boxed"]:
            ys, xs = np.nonzero(phantom.masks[finding])
            expected = np.zeros((SIZE, SIZE), bool)
            expected[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
            assert np.array_equal(ds.mask(i, NIH_OF[finding]), expected), finding
            boxed += 1
    assert boxed > 0


def test_folder_read_back(datasets):
    out = datasets["folder"]
    records = records_by(read_manifest(out))
    ds = load_dataset("folder", root=out / "chest_xray", subtypes=True)
    assert len(ds) == N
    for i in range(len(ds)):
        record = records[rel(ds.table.at[i, "path"], out)]
        assert ds.raw_labels[i, 0] == float(bool(record["findings"]))
        if record["findings"]:
            assert ds.raw_labels[i, 1] == float(record["findings"] == ["consolidation"])
            assert ds.raw_labels[i, 2] == float(record["findings"] == ["infiltrates"])
        assert ds.table.at[i, "patient_id"] == record["patient"]
        assert ds.table.at[i, "split"] == {"val": "valid"}.get(record["split"], record["split"])


def test_vindr_read_back_masks_equal_boxes(datasets):
    out = datasets["vindr"]
    manifest = read_manifest(out)
    records = records_by(manifest, "image_id")
    ds = load_dataset("vindr", csv=out / "train.csv")
    assert len(ds) == N and (ds.table["n_readers"] == 3).all()
    for i in range(len(ds)):
        record = records[ds.table.at[i, "image_id"]]
        positives = {p for p, v in zip(ds.pathologies, ds.raw_labels[i]) if v == 1}
        assert positives == {VINDR_OF[f] for f in record["findings"]}
        phantom = manifest_phantom(manifest, record)
        expected = np.zeros((SIZE, SIZE), bool)
        for finding in record["findings"]:
            for x0, y0, x1, y1 in mask_boxes(phantom.masks[finding]):
                expected[y0:y1, x0:x1] = True
        assert np.array_equal(ds.mask(i), expected)
        # 12-bit pixels come back exactly, MONOCHROME1 files inverted by the reader
        assert np.array_equal(ds.image(i).pixels, phantom.image.astype(np.float32))


def test_generic_read_back_masks_equal_union(datasets):
    out = datasets["generic"]
    manifest = read_manifest(out)
    records = records_by(manifest)
    ds = load_dataset("generic", csv=out / "labels.csv", label_cols=GENERIC_LABELS,
                      mask_col="mask_path", patient_col="patient_id", study_col="study_id",
                      view_col="view", weak_col="weak", split_col="split")
    assert len(ds) == N
    for i in range(len(ds)):
        record = records[rel(ds.table.at[i, "path"], out)]
        for finding, value in zip(GENERIC_LABELS, ds.raw_labels[i]):
            if finding.lower() in record["findings"]:
                assert value == 1.0
            else:
                assert value == 0.0 or (record["weak"] and np.isnan(value))
        assert bool(ds.table.at[i, "weak"]) == record["weak"]
        mask = ds.mask(i)
        if record["weak"]:
            assert mask is None
            continue
        phantom = manifest_phantom(manifest, record)
        union = np.zeros((SIZE, SIZE), bool)
        for m in phantom.masks.values():
            union |= m
        assert np.array_equal(mask, union)
        assert np.array_equal(read_mask(out / record["mask_path"]), union)
        assert np.array_equal(ds.image(i).pixels, phantom.image.astype(np.float32))
