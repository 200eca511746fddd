"""``cxrlab study scaling`` and ``cxrlab study report`` through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import typer
import yaml
from typer.testing import CliRunner

from cxrlab.cli import study as study_cli
from cxrlab.cli.main import app as main_app

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
runner = CliRunner()


def _app() -> typer.Typer:
    """The top-level app once `study` is registered there; until then, the sub-app alone."""
    if any(group.name == "study" for group in main_app.registered_groups):
        return main_app
    app = typer.Typer()
    app.add_typer(study_cli.app, name="study")
    return app


CRASH = {"resnet18@64": True}


def _fake_train(cfg, resume=False, progress=True, epoch_hook=None):
    run_dir = Path(cfg.output.root) / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    if CRASH.get(f"{cfg.model.arch}@{cfg.data.size}", False):
        (run_dir / "status.json").write_text(json.dumps({"state": "failed"}))
        raise RuntimeError("simulated crash")
    auroc = 0.6 + cfg.data.size / 1000 + (0.05 if cfg.model.arch == "resnet18" else 0.0)
    (run_dir / "metrics.json").write_text(json.dumps({"valid": {"tasks": {"Cardiomegaly": {"auroc": auroc}}}}))
    (run_dir / "best.json").write_text(json.dumps({"auroc": {"value": auroc, "phase": 0, "epoch": 1}}))
    (run_dir / "status.json").write_text(json.dumps({"state": "finished"}))
    return run_dir


def _study_file(tmp_path: Path) -> Path:
    raw = yaml.safe_load((CONFIGS / "demo_scaling.yaml").read_text())
    raw["study"]["phantoms"] = None
    raw["recipe"]["data"]["options"] = {"csv": "unused.csv", "root": "."}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_scaling_runs_reports_failures_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr("cxrlab.tasks.scaling.run.train", _fake_train)
    monkeypatch.setattr("cxrlab.tasks.scaling.run.prepare_data", lambda cfg, cache_root=None: None)
    config, out = _study_file(tmp_path), tmp_path / "study"
    args = ["study", "scaling", str(config), "--out", str(out), "--executor", "inline"]
    result = runner.invoke(_app(), args)
    assert result.exit_code == 1, result.output              # one run failed
    assert "3 run(s) finished, 0 skipped" in result.output and "simulated crash" in result.output
    assert "accumulation" in result.output and "inline" in result.output
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 3 and set(results["micro_batch"]) == {16} and set(results["effective_batch"]) == {32}

    monkeypatch.setitem(CRASH, "resnet18@64", False)       # the fault is fixed
    result = runner.invoke(_app(), args)
    assert result.exit_code == 0, result.output
    assert "1 run(s) finished, 3 skipped" in result.output
    assert pd.read_csv(out / "results.csv")["key"].is_unique and len(pd.read_csv(out / "results.csv")) == 4

    report = runner.invoke(_app(), ["study", "report", str(out)])
    assert report.exit_code == 0, report.output
    assert "AUROC by resolution" in report.output and (out / "report.md").is_file()
    delta = pd.read_csv(out / "model_scaling_delta.csv")
    assert set(delta["family"]) == {"resnet"} and delta["delta_max"].round(6).tolist() == [0.05, 0.05]


def test_dry_run_shows_the_seed001_batch_plan(tmp_path):
    result = runner.invoke(_app(), ["study", "scaling", str(CONFIGS / "scaling_seed001.yaml"), "--out",
                                    str(tmp_path / "plan"), "--dry-run", "study.seeds=[0]"])
    assert result.exit_code == 0, result.output
    assert "125 runs" in result.output and "efficientnet_b5" in result.output
    assert not (tmp_path / "plan").exists()


def test_bad_arguments_exit_with_a_message(tmp_path):
    result = runner.invoke(_app(), ["study", "scaling", str(tmp_path / "missing.yaml"), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "study file not found" in result.output
    config = _study_file(tmp_path)
    result = runner.invoke(_app(), ["study", "scaling", str(config), "--out", str(tmp_path / "o"),
                                    "--executor", "local", "--ray-address", "auto"])
    assert result.exit_code == 2 and "only used with --executor ray" in result.output
    result = runner.invoke(_app(), ["study", "report", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "no results.csv" in result.output
