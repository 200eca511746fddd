"""CheXpert adapter: torchxrayvision's real train CSV, and bad inputs in small files.

Expected numbers are computed independently with plain pandas on the raw CSV.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cxrlab.data.datasets import load_dataset
from cxrlab.data.datasets.chexpert import CHEXPERT_PATHOLOGIES, ChexpertDataset
from cxrlab.errors import ConfigError, CSVFormatError, LabelValueError, MissingFileError

HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT_PATHOLOGIES)
BLANK_LABELS = "," * (len(CHEXPERT_PATHOLOGIES) - 1)


@pytest.fixture(scope="module")
def raw(xrv_data) -> pd.DataFrame:
    """The CSV read the plain way (floats, NaN for blank) plus its study key."""
    frame = pd.read_csv(xrv_data / "chexpert_train.csv.gz")
    frame["study"] = frame["Path"].str.replace(r"^.*/(patient\d+/study\d+)/.*$", r"\1",
                                               regex=True)
    return frame


@pytest.fixture(scope="module")
def chexpert(xrv_data) -> ChexpertDataset:
    return ChexpertDataset(xrv_data / "chexpert_train.csv.gz", check_files=False)


def test_real_csv_rows_studies_patients(chexpert, raw):
    assert len(chexpert) == len(raw) == 223414
    assert chexpert.table["study_id"].nunique() == raw["study"].nunique() == 187641
    assert chexpert.table["patient_id"].nunique() == 64540
    assert chexpert.table["patient_id"].nunique() == raw["study"].str.split("/").str[0].nunique()
    assert chexpert.skips.count == 0
    row = chexpert.table.iloc[1]
    assert row["patient_id"] == "patient00002" and row["study_id"] == "patient00002/study2"
    assert row["path"].endswith("/CheXpert-v1.0-small/train/patient00002/study2/"
                                "view1_frontal.jpg")
    assert Path(row["path"]).is_absolute()
    np.testing.assert_array_equal(chexpert.raw_labels,
                                  raw[CHEXPERT_PATHOLOGIES].to_numpy(dtype=np.float32))


def _expected_image_counts(raw: pd.DataFrame, rule: str) -> dict[str, dict[str, int]]:
    counts = {}
    for name in CHEXPERT_PATHOLOGIES:
        v = raw[name]
        pos, neg, unc = int((v == 1).sum()), int((v == 0).sum()), int((v == -1).sum())
        if rule == "ignore":
            counts[name] = {"n": pos + neg, "positive": pos, "negative": neg}
        elif rule == "ones":
            counts[name] = {"n": pos + neg + unc, "positive": pos + unc, "negative": neg}
        elif rule == "zeros":
            counts[name] = {"n": pos + neg + unc, "positive": pos, "negative": neg + unc}
        else:
            counts[name] = {"n": pos + neg + unc, "positive": pos, "negative": neg,
                            "uncertain": unc}
    return counts


@pytest.mark.parametrize("rule", ["ignore", "ones", "zeros", "multiclass"])
def test_real_csv_class_counts_per_policy(chexpert, raw, rule):
    data = chexpert.with_policy([f"*={rule}"])
    assert data.label_counts("image") == _expected_image_counts(raw, rule)


def test_real_csv_known_counts(chexpert):
    counts = chexpert.with_policy(["*=multiclass"]).label_counts()
    assert counts["Edema"] == {"n": 85956, "positive": 52246, "negative": 20726,
                               "uncertain": 12984}
    assert counts["Pleural Effusion"]["positive"] == 86187


def test_real_csv_study_aggregation(chexpert, raw):
    # Independent study labels: positive if any view is 1, else uncertain if any view is
    # -1, else negative if any view is 0 (multiclass); under ignore -1 is dropped first.
    studies, labels = chexpert.with_policy(["*=multiclass"]).study_labels()
    assert len(studies) == 187641
    labels = pd.DataFrame(labels, index=studies, columns=CHEXPERT_PATHOLOGIES)
    ignore = chexpert.label_counts("study")
    names = ["Edema", "Pleural Effusion", "Support Devices", "No Finding"]
    values = raw[names]
    flags = pd.concat({"pos": values == 1, "unc": values == -1, "neg": values == 0},
                      axis=1).groupby(raw["study"].to_numpy()).any()
    labels = labels.loc[flags.index]
    for name in names:
        pos, unc, neg = flags[("pos", name)], flags[("unc", name)], flags[("neg", name)]
        column = labels[name]
        assert int((column == 1).sum()) == int(pos.sum())
        assert int((column == -1).sum()) == int((~pos & unc).sum())
        assert int((column == 0).sum()) == int((~pos & ~unc & neg).sum())
        assert int(column.isna().sum()) == int((~pos & ~unc & ~neg).sum())
        assert ignore[name] == {"positive": int(pos.sum()), "negative": int((~pos & neg).sum()),
                                "n": int((pos | neg).sum())}
    # CheXpert labels come from the report, so the views of a study agree: a study's
    # label is its first view's.
    first = raw.drop_duplicates("study").set_index("study")
    np.testing.assert_array_equal(labels.loc[first.index].to_numpy(),
                                  first[CHEXPERT_PATHOLOGIES].to_numpy(dtype=np.float32))


def test_study_with_disagreeing_views_takes_the_max(chexpert):
    # Make the views of real multi-view studies disagree and aggregate again.
    table = chexpert.table
    multi = table["study_id"].duplicated(keep=False).to_numpy()
    rows = np.flatnonzero(multi)[:400]
    data = chexpert.subset(rows).with_policy(["*=multiclass"])
    edema = CHEXPERT_PATHOLOGIES.index("Edema")
    first_view = ~data.table["study_id"].duplicated().to_numpy()
    data.raw_labels[:, edema] = np.where(first_view, 0.0, 1.0)   # 0 then 1 -> 1
    data.raw_labels[:, edema + 1] = np.where(first_view, -1.0, 0.0)  # -1 then 0 -> -1
    data = data.with_policy(["*=multiclass"])
    studies, labels = data.study_labels()
    assert len(studies) == data.table["study_id"].nunique() > 100
    assert (labels[:, edema] == 1).all()
    assert (labels[:, edema + 1] == -1).all()
    assert (data.with_policy(["*=zeros"]).study_labels()[1][:, edema + 1] == 0).all()


def test_real_csv_frontal_filter(chexpert, raw):
    frontal = chexpert.filter_views(frontal=True)
    lateral = chexpert.filter_views(frontal=False)
    assert len(frontal) == int((raw["Frontal/Lateral"] == "Frontal").sum()) == 191027
    assert len(lateral) == 32387
    assert set(lateral.table["view"]) == {"LATERAL"}
    assert len(chexpert.filter_views(views=["pa"])) == int((raw["AP/PA"] == "PA").sum()) == 29420
    assert len(chexpert.filter_views(frontal=True, views=["AP"])) == 161590
    # Labels stay aligned with their rows after the filter.
    rows = np.flatnonzero(raw["Frontal/Lateral"].to_numpy() == "Frontal")
    np.testing.assert_array_equal(frontal.raw_labels, chexpert.raw_labels[rows])
    assert frontal.table["path"].tolist()[:3] == chexpert.table["path"].iloc[rows[:3]].tolist()


def _write(path: Path, rows: list[str], gz: bool = False) -> Path:
    text = "\n".join([HEADER, *rows]) + "\n"
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def _row(patient: int, study: int, labels: str = BLANK_LABELS, kind: str = "Frontal",
         view: str = "PA") -> str:
    return (f"CheXpert-v1.0-small/train/patient{patient:05d}/study{study}/view1_"
            f"{kind.lower()}.jpg,Male,50,{kind},{view if kind == 'Frontal' else ''},{labels}")


def _labels(**values: str) -> str:
    return ",".join(values.get(name.replace(" ", "_"), "") for name in CHEXPERT_PATHOLOGIES)


@pytest.mark.parametrize("bad", ["2", "yes"])
def test_bad_label_value_names_line_and_column(tmp_path, bad):
    csv = _write(tmp_path / "train.csv", [_row(1, 1, _labels(Edema="1.0")),
                                          _row(2, 1, _labels(Edema=bad))])
    with pytest.raises(LabelValueError) as info:
        ChexpertDataset(csv, check_files=False)
    message = str(info.value)
    assert f"{csv}:3" in message and "'Edema'" in message and repr(bad) in message


def test_bad_label_value_skipped_and_counted(tmp_path):
    csv = _write(tmp_path / "train.csv.gz", [
        _row(1, 1, _labels(Edema="1.0")), _row(2, 1, _labels(Edema="2")),
        _row(3, 1, _labels(Cardiomegaly="yes")), _row(4, 1, _labels(Edema="-1.0"))], gz=True)
    data = ChexpertDataset(csv, check_files=False, on_error="skip")
    assert len(data) == 2
    assert data.table["patient_id"].tolist() == ["patient00001", "patient00004"]
    assert data.skips.count == 2
    assert ":3" in str(data.skips.skipped[0]) and "'Cardiomegaly'" in str(data.skips.skipped[1])
    assert data.raw_labels[:, CHEXPERT_PATHOLOGIES.index("Edema")].tolist() == [1.0, -1.0]


def test_missing_required_column(tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_text("Path,Sex,Age,Frontal/Lateral,AP/PA,Edema\nx,Male,1,Frontal,PA,1.0\n")
    with pytest.raises(CSVFormatError, match="missing required column.*'No Finding'"):
        ChexpertDataset(csv, check_files=False)


def test_missing_csv(tmp_path):
    with pytest.raises(MissingFileError):
        ChexpertDataset(tmp_path / "nope.csv")


def _tree(tmp_path: Path) -> Path:
    """``<tmp>/CheXpert-v1.0-small/train.csv`` with two real tiny JPEGs and one missing."""
    folder = tmp_path / "CheXpert-v1.0-small"
    for patient, study, kind in [(1, 1, "frontal"), (1, 1, "lateral")]:
        image = folder / f"train/patient{patient:05d}/study{study}/view1_{kind}.jpg"
        image.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(image), np.tile(np.arange(0, 240, 10, dtype=np.uint8), (16, 1)))
    return _write(folder / "train.csv", [
        _row(1, 1, _labels(Edema="1.0")), _row(1, 1, _labels(Edema="0.0"), kind="Lateral"),
        _row(2, 1, _labels(Edema="0.0"))])


def test_missing_image_names_the_row(tmp_path):
    csv = _tree(tmp_path)
    with pytest.raises(MissingFileError) as info:
        ChexpertDataset(csv)
    assert f"{csv}:4" in str(info.value) and "patient00002" in str(info.value)
    data = ChexpertDataset(csv, on_error="skip")
    assert len(data) == 2 and data.skips.count == 1


def test_default_root_is_parent_of_the_chexpert_folder(tmp_path):
    csv = _tree(tmp_path)
    data = ChexpertDataset(csv, on_error="skip")
    assert data.root == str(tmp_path.resolve())
    assert all(Path(p).is_file() for p in data.table["path"])
    assert data.table["view"].tolist() == ["PA", "LATERAL"]
    assert data.table["frontal"].tolist() == [True, False]
    # Study aggregation over the two views: Edema 1 (frontal) and 0 (lateral) -> 1.
    studies, labels = data.study_labels()
    assert studies.tolist() == ["patient00001/study1"]
    assert labels[0, CHEXPERT_PATHOLOGIES.index("Edema")] == 1.0
    image = data.image(0)
    assert image.pixels.shape == (16, 24)
    assert data.mask(0) is None and not data.has_masks()
    # An explicit root wins; a CSV elsewhere defaults to its own folder.
    moved = tmp_path / "labels.csv"
    moved.write_text(csv.read_text())
    assert ChexpertDataset(moved, check_files=False).root == str(tmp_path.resolve())
    other = ChexpertDataset(moved, root=tmp_path / "x", check_files=False)
    assert other.table["path"][0].startswith(str((tmp_path / "x").resolve()))


def test_bad_path_and_view_kind(tmp_path):
    csv = _write(tmp_path / "t.csv", [f"somewhere/view1.jpg,Male,1,Frontal,PA,{BLANK_LABELS}"])
    with pytest.raises(CSVFormatError, match="patientNNNNN/studyN"):
        ChexpertDataset(csv, check_files=False)
    csv = _write(tmp_path / "t.csv", [_row(1, 1).replace(",Frontal,", ",Oblique,")])
    with pytest.raises(CSVFormatError, match="Frontal/Lateral"):
        ChexpertDataset(csv, check_files=False)


def test_registry_policy_and_subset(tmp_path, xrv_data):
    csv = _write(tmp_path / "t.csv", [_row(1, 1, _labels(Edema="-1.0")),
                                      _row(2, 1, _labels(Edema="1.0"))])
    data = load_dataset("chexpert", csv=csv, check_files=False, policy=["Edema=ones"])
    edema = CHEXPERT_PATHOLOGIES.index("Edema")
    assert data.labels[:, edema].tolist() == [1.0, 1.0]
    assert data.raw_labels[:, edema].tolist() == [-1.0, 1.0]
    second = data.subset([1])
    assert isinstance(second, ChexpertDataset) and len(second) == 1
    assert second.table["patient_id"].tolist() == ["patient00002"]
    with pytest.raises(ConfigError, match="unknown class"):
        load_dataset("chexpert", csv=csv, check_files=False, policy=["Oedema=ones"])
    with pytest.raises(ConfigError, match="unknown dataset"):
        load_dataset("chexpert2", csv=csv)
    with pytest.raises(ConfigError, match="chexpert"):
        load_dataset("chexpert", csv_file=csv)
