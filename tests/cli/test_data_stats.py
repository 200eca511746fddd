"""``cxrlab data stats`` on the real label CSVs and on small bad files."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrlab.cli.main import app
from cxrlab.data.datasets.chexpert import CHEXPERT_PATHOLOGIES

runner = CliRunner()


def _stats(*args: str):
    return runner.invoke(app, ["data", "stats", *args])


@pytest.fixture(scope="module")
def chexpert_raw(xrv_data) -> pd.DataFrame:
    return pd.read_csv(xrv_data / "chexpert_train.csv.gz")


def test_chexpert_json_per_image(xrv_data, chexpert_raw):
    result = _stats("--dataset", "chexpert", "--csv", str(xrv_data / "chexpert_train.csv.gz"),
                    "--policy", "Edema=multiclass", "--policy", "Atelectasis=ones", "--json")
    assert result.exit_code == 0, result.output
    counts = json.loads(result.stdout)
    assert list(counts) == CHEXPERT_PATHOLOGIES
    for name in CHEXPERT_PATHOLOGIES:
        v = chexpert_raw[name]
        pos, neg, unc = int((v == 1).sum()), int((v == 0).sum()), int((v == -1).sum())
        if name == "Edema":
            expected = {"n": pos + neg + unc, "positive": pos, "negative": neg, "uncertain": unc}
        elif name == "Atelectasis":
            expected = {"n": pos + neg + unc, "positive": pos + unc, "negative": neg}
        else:  # default: ignore
            expected = {"n": pos + neg, "positive": pos, "negative": neg}
        assert counts[name] == expected
    assert counts["Atelectasis"] == {"n": 68443, "positive": 67115, "negative": 1328}


def test_chexpert_table_per_study_frontal(tmp_path, chexpert_raw):
    # The first 40,000 real rows (plain CSV) keep the test quick.
    sample = chexpert_raw.iloc[:40000]
    csv = tmp_path / "train.csv"
    sample.to_csv(csv, index=False)
    result = _stats("-d", "chexpert", "--csv", str(csv), "--level", "study", "--frontal-only",
                    "-p", "*=zeros")
    assert result.exit_code == 0, result.output
    frontal = sample[sample["Frontal/Lateral"] == "Frontal"]
    studies = frontal["Path"].str.replace(r"/view[^/]*$", "", regex=True)
    assert f"{len(frontal)} images" in result.stdout
    assert f"{studies.nunique()} studies" in result.stdout
    # U-Zeros: a study is positive iff any frontal view is 1.
    edema = int((frontal["Edema"] == 1).groupby(studies.to_numpy()).any().sum())
    n_edema = int(frontal["Edema"].notna().groupby(studies.to_numpy()).any().sum())
    line = next(row for row in result.stdout.splitlines() if " Edema " in row)
    numbers = [int(tok) for tok in line.replace("│", " ").split() if tok.isdigit()]
    assert numbers == [n_edema, edema, n_edema - edema]


def test_nih_and_vindr_json(xrv_data):
    nih = _stats("-d", "nih", "--csv", str(xrv_data / "Data_Entry_2017_v2020.csv.gz"), "--json")
    assert nih.exit_code == 0, nih.output
    counts = json.loads(nih.stdout)
    assert counts["Effusion"] == {"n": 112120, "positive": 13317, "negative": 98803}
    vindr = _stats("-d", "vindr", "--csv", str(xrv_data / "vinbigdata-train.csv.gz"), "--json")
    assert vindr.exit_code == 0, vindr.output
    assert json.loads(vindr.stdout)["Cardiomegaly"] == {"n": 15000, "positive": 2300,
                                                         "negative": 12700}


def test_generic_with_options(tmp_path):
    csv = tmp_path / "mine.csv"
    csv.write_text("file,pid,A,B\nx1.png,p1,1,-1\nx2.png,p1,0,-1\nx3.png,p2,,1\n")
    result = _stats("-d", "generic", "--csv", str(csv), "-o", "path_col=file",
                    "-o", "label_cols=A,B", "-o", "patient_col=pid", "-p", "B=multiclass",
                    "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "A": {"n": 2, "positive": 1, "negative": 1},
        "B": {"n": 3, "positive": 1, "negative": 0, "uncertain": 2}}


def test_errors_exit_2_with_one_line(tmp_path, xrv_data):
    header = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT_PATHOLOGIES)
    good = "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,F,1,Frontal,AP"
    bad = "CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg,F,1,Frontal,AP"
    csv = tmp_path / "train.csv"
    csv.write_text(f"{header}\n{good},1.0{',' * 13}\n{bad},yes{',' * 13}\n")
    result = _stats("-d", "chexpert", "--csv", str(csv), "--json")
    assert result.exit_code == 2
    assert "train.csv:3" in result.stderr and "'No Finding'" in result.stderr
    skipped = _stats("-d", "chexpert", "--csv", str(csv), "--json", "--on-error", "skip")
    assert skipped.exit_code == 0
    assert json.loads(skipped.stdout)["No Finding"] == {"n": 1, "positive": 1, "negative": 0}
    assert "skipped 1 item" in skipped.stderr

    csv.write_text(f"{header}\n{good},1.0{',' * 13}\n")
    unknown = _stats("-d", "chexpert", "--csv", str(csv), "-p", "Oedema=ones")
    assert unknown.exit_code == 2 and "unknown class 'Oedema'" in unknown.stderr
    policy = _stats("-d", "chexpert", "--csv", str(csv), "-p", "Edema=sometimes")
    assert policy.exit_code == 2 and "'sometimes' is not one of" in policy.stderr
    missing = _stats("-d", "chexpert", "--csv", str(tmp_path / "none.csv"))
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    files = _stats("-d", "chexpert", "--csv", str(csv), "--check-files")
    assert files.exit_code == 2 and "train.csv:2" in files.stderr


def test_folder_and_mimic_through_shared_options(tmp_path):
    for name in ["train/NORMAL/IM-0001-0001.jpeg", "train/PNEUMONIA/person1_virus_1.jpeg",
                 "test/PNEUMONIA/person2_bacteria_3.jpeg"]:
        (tmp_path / "xray" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "xray" / name).write_bytes(b"")  # stats never opens the images
    folder = _stats("-d", "folder", "--root", str(tmp_path / "xray"), "-o", "subtypes=true",
                    "--json")
    assert folder.exit_code == 0, folder.output
    assert json.loads(folder.stdout) == {
        "Pneumonia": {"n": 3, "positive": 2, "negative": 1},
        "Bacterial": {"n": 3, "positive": 1, "negative": 2},
        "Viral": {"n": 3, "positive": 1, "negative": 2}}

    columns = ",".join(CHEXPERT_PATHOLOGIES)
    labels = tmp_path / "chexpert.csv"
    labels.write_text(f"subject_id,study_id,{columns}\n10,20,1.0{',' * 13}\n")
    meta = tmp_path / "meta.csv"
    meta.write_text("dicom_id,subject_id,study_id,ViewPosition\nd1,10,20,PA\nd2,10,20,LATERAL\n")
    no_meta = _stats("-d", "mimic", "--csv", str(labels))
    assert no_meta.exit_code == 2 and "metadata_csv" in no_meta.stderr
    per_study = _stats("-d", "mimic", "--csv", str(labels), "-o", f"metadata_csv={meta}",
                       "--level", "study", "--json")
    assert per_study.exit_code == 0, per_study.output
    assert json.loads(per_study.stdout)["No Finding"] == {"n": 1, "positive": 1, "negative": 0}


def test_skip_that_skips_every_row_is_an_error(tmp_path, chexpert_raw):
    """Issue 17, item 7: a wrong --root with --check-files --on-error skip used to exit 0
    with every count at zero."""
    csv = tmp_path / "train.csv"
    chexpert_raw.iloc[:50].to_csv(csv, index=False)
    result = _stats("-d", "chexpert", "--csv", str(csv), "--root", str(tmp_path / "wrong"),
                    "--check-files", "--on-error", "skip", "--json")
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert "every row was skipped (50 in all" in " ".join(lines)
    assert "check the root folder" in result.stderr
