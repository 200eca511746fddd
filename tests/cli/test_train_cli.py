"""The training commands end to end through the CLI on SYNTHETIC phantoms."""

from __future__ import annotations

import json

import pandas as pd
import yaml
from typer.testing import CliRunner

from cxrlab.cli.main import app

runner = CliRunner()


def _recipe(tmp_path, tiny_recipe, name="cli"):
    recipe = tiny_recipe(tmp_path / "runs", name=name)
    recipe["train"]["phases"] = [{"epochs": 1, "lr": 3e-3}]
    recipe["output"]["mlflow"] = True
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_train_evaluate_predict_compare(tmp_path, tiny_recipe, rg1_dir, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    recipe = _recipe(tmp_path, tiny_recipe)
    result = runner.invoke(app, ["train", str(recipe), "--no-progress", "seed=1"])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "cli"
    assert "Cardiomegaly" in result.output and "95% CI" in result.output
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] == 1

    # MLflow holds the run with its per-task metrics.
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["cxrlab"])
    assert len(runs) == 1 and "metrics.test_mean_auroc" in runs.columns
    assert (tmp_path / "runs" / "mlartifacts").is_dir()

    result = runner.invoke(app, ["evaluate", str(run_dir), "--split", "test", "--json"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.output)["test"]["tasks"]) == {"Cardiomegaly", "Pleural Effusion"}

    out = tmp_path / "preds.csv"
    result = runner.invoke(app, ["predict", str(run_dir / "best_auroc.pt"), str(rg1_dir / "RG1_UNCR.dcm"),
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    preds = pd.read_csv(out)
    assert list(preds["path"]) == [str(rg1_dir / "RG1_UNCR.dcm")]
    assert preds["prob_Cardiomegaly"].between(0, 1).all()

    other = _recipe(tmp_path, tiny_recipe, name="cli2")
    assert runner.invoke(app, ["train", str(other), "--no-progress", "seed=2"]).exit_code == 0
    result = runner.invoke(app, ["compare", str(run_dir), str(tmp_path / "runs" / "cli2"), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {r["task"] for r in rows} == {"Cardiomegaly", "Pleural Effusion"}
    assert all(0 <= r["p_value"] <= 1 for r in rows)


def test_predict_names_a_bad_file(tmp_path):
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"")
    result = runner.invoke(app, ["predict", str(tmp_path / "missing.pt"), str(bad)])
    assert result.exit_code == 2 and "missing.pt" in result.output


def test_train_refuses_unknown_override(tmp_path, tiny_recipe):
    recipe = _recipe(tmp_path, tiny_recipe)
    result = runner.invoke(app, ["train", str(recipe), "model.archh=x"])
    assert result.exit_code == 2 and "unknown key" in result.output
