"""``cxrlab metrics classification`` through the real Typer app."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrlab.cli.main import app
from cxrlab.metrics import delong_ci, threshold_metrics, youden_threshold

runner = CliRunner()


def _write_csv(path, n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = (rng.random(n) < 0.3).astype(float)
    score = np.round(rng.random(n) + 0.5 * label, 2)
    label[rng.random(n) < 0.1] = np.nan  # blank cells: unknown, dropped
    table = pd.DataFrame({"image": [f"img{i}.png" for i in range(n)], "Edema": label, "prob": score})
    table.to_csv(path, index=False)
    return table


def _run(*args: str):
    return runner.invoke(app, ["metrics", "classification", *args])


def test_json_values_equal_library_functions(tmp_path) -> None:
    csv = tmp_path / "preds.csv"
    table = _write_csv(csv)
    result = _run("--csv", str(csv), "--label-col", "Edema", "--score-col", "prob", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    kept = table["Edema"].notna().to_numpy()
    y, s = table["Edema"].to_numpy()[kept], table["prob"].to_numpy()[kept]
    auc, low, high = delong_ci(y, s)
    threshold = youden_threshold(y, s)
    at = threshold_metrics(y, s, threshold)
    assert out["auroc"] == pytest.approx(auc, abs=1e-12)
    assert out["auroc_ci_low"] == pytest.approx(low, abs=1e-12)
    assert out["auroc_ci_high"] == pytest.approx(high, abs=1e-12)
    assert out["n"] == kept.sum() and out["n_positive"] == int(y.sum())
    assert out["threshold"] == threshold
    assert out["sensitivity"] == pytest.approx(at["sensitivity"])
    assert out["specificity"] == pytest.approx(at["specificity"])


def test_table_output(tmp_path) -> None:
    csv = tmp_path / "preds.csv"
    table = _write_csv(csv, seed=1)
    result = _run("--csv", str(csv), "--label-col", "Edema", "--score-col", "prob")
    assert result.exit_code == 0, result.output
    kept = table["Edema"].notna()
    auc = delong_ci(table["Edema"][kept], table["prob"][kept])[0]
    assert "AUROC" in result.stdout and f"{auc:.4f}" in result.stdout
    assert "Youden" in result.stdout


def test_missing_column_names_file_and_columns(tmp_path) -> None:
    csv = tmp_path / "preds.csv"
    _write_csv(csv)
    result = _run("--csv", str(csv), "--label-col", "Oedema", "--score-col", "prob", "--json")
    assert result.exit_code == 2
    assert "preds.csv" in result.output and "'Oedema'" in result.output
    assert "'image', 'Edema', 'prob'" in result.output


def test_bad_labels_scores_and_files(tmp_path) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text("y,p\n1,0.9\n0,0.2\n2,0.4\n,0.5\n")
    result = _run("--csv", str(csv), "--label-col", "y", "--score-col", "p")
    assert result.exit_code == 2 and "'2'" in result.output and "line(s) 4" in result.output

    csv.write_text("y,p\n1,0.9\n0,abc\n,\n1,0.3\n")
    result = _run("--csv", str(csv), "--label-col", "y", "--score-col", "p")
    assert result.exit_code == 2 and "'abc'" in result.output and "line(s) 3" in result.output

    csv.write_text("y,p\n1,0.9\n1,0.2\n,0.4\n")
    result = _run("--csv", str(csv), "--label-col", "y", "--score-col", "p", "--json")
    assert result.exit_code == 2 and "both classes" in result.output

    result = _run("--csv", str(tmp_path / "nope.csv"), "--label-col", "y", "--score-col", "p")
    assert result.exit_code == 2 and "nope.csv" in result.output and "not found" in result.output


def test_real_chexpert_csv_uncertain_labels_are_rejected(xrv_data) -> None:
    """The raw CheXpert file holds -1 (uncertain): the command says so instead of scoring."""
    csv = xrv_data / "chexpert_train.csv.gz"
    result = _run("--csv", str(csv), "--label-col", "Pleural Effusion", "--score-col", "Age", "--json")
    assert result.exit_code == 2
    assert "chexpert_train.csv.gz" in result.output and "'-1.0'" in result.output
