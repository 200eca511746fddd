"""``cxrlab screen`` end to end through the CLI on SYNTHETIC phantoms.

The demo test is the issue's acceptance check at a reduced size: the ensemble trained on
phantoms must screen the internal test set at sensitivity >= 0.95 (specificity reported)
and call unseen-disease images normal less often than normal images.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import typer
from typer.testing import CliRunner

from cxrlab.cli import screen

runner = CliRunner()


def _app() -> typer.Typer:
    """The top-level app when it mounts ``screen``, otherwise ``screen`` on a fresh app."""
    from cxrlab.cli.main import app

    names = {group.name for group in app.registered_groups}
    if "screen" in names:
        return app
    fresh = typer.Typer()

    @fresh.callback()
    def _root() -> None:
        """cxrlab (test mount)."""

    screen.register(fresh)
    return fresh


DEMO = ["--n", "300", "--n-external", "80", "--size", "48", "--quiet",
        "--set", "data.diseases=[Effusion,Cardiomegaly]",
        "--set", "risk_groups={critical: [Effusion], cardiomegaly: [Cardiomegaly]}",
        "--set", "data.dilation.size=3", "--set", "train.phase2_epochs=2",
        "--set", "train.workers=1", "--set", "output.cost_batch_sizes=[4]"]
"""The demo at a test size: 2 diseases, 48 px, 300 + 80 phantoms, one process."""


def test_demo_screens_phantoms_and_flags_unseen_diseases(tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(_app(), ["screen", "demo", "--out", str(out), *DEMO])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    print({k: report[k] for k in ("sensitivity", "specificity", "unseen_predicted_normal_rate",
                                  "seconds")})
    assert report["sensitivity"] >= 0.95
    assert 0.0 <= report["specificity"] <= 1.0
    assert report["unseen_predicted_normal_rate"] < report["normal_predicted_normal_rate"]
    assert report["normal_predicted_normal_rate"] == report["specificity"]
    for path in report["tables"].values():
        assert Path(path).is_file()
    assert "sensitivity" in result.output and "SYNTHETIC" in result.output

    run_dir = Path(report["run_dir"])
    evaluated = runner.invoke(_app(), ["screen", "evaluate", str(run_dir), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["sensitivity"] == report["sensitivity"]

    point = json.loads((run_dir / "ensemble" / "operating_point.json").read_text())
    moved = runner.invoke(_app(), ["screen", "evaluate", str(run_dir), "--json",
                                   "--target-sensitivity", "0.5"])
    assert moved.exit_code == 0, moved.output
    lower = json.loads((run_dir / "ensemble" / "operating_point.json").read_text())
    assert lower["target_sensitivity"] == 0.5 and lower["sensitivity"] >= 0.5
    assert lower["threshold"] >= point["threshold"] and lower["specificity"] >= point["specificity"]
    assert json.loads(moved.stdout)["variants"]["ensemble"]["operating_point"] == lower
    assert "target_sensitivity: 0.5" in (run_dir / "config.yaml").read_text()

    images = pd.read_csv(run_dir / "predictions" / "ensemble_unseen.csv")["path"].head(2)
    csv = tmp_path / "pred.csv"
    predicted = runner.invoke(_app(), ["screen", "predict", str(run_dir), *images,
                                       "--out", str(csv)])
    assert predicted.exit_code == 0, predicted.output
    frame = pd.read_csv(csv)
    assert list(frame["decision"].unique()) != [] and set(frame["decision"]) <= {"normal",
                                                                                "abnormal"}
    assert "risk group" in predicted.output


def test_train_reports_a_bad_recipe_in_one_line(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("data: {diseases: [A], unseen: [A]}\n")
    result = runner.invoke(_app(), ["screen", "train", str(recipe)])
    assert result.exit_code == 2
    assert "unseen" in result.output and "Traceback" not in result.output
    missing = runner.invoke(_app(), ["screen", "evaluate", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "config.yaml" in missing.output


def test_cost_command_compares_variants():
    result = runner.invoke(_app(), ["screen", "cost", "--encoder", "test_resnet", "--diseases",
                                    "3", "--size", "64", "--repeats", "1"])
    assert result.exit_code == 0, result.output
    assert "ensemble" in result.output and "shared" in result.output
