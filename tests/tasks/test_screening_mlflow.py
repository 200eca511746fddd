"""Screening runs log to the run root's MLflow store and leave the environment as it was."""

from __future__ import annotations

import os

import pytest

from cxrlab.config.screening import screening_config_from_dict
from cxrlab.tasks.screening.evaluate import log_to_mlflow


def test_screening_report_reaches_mlflow(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = screening_config_from_dict({"name": "scr", "data": {"diseases": ["Effusion"]}, "output": {"root": str(tmp_path), "experiment": "scr-test"}})
    run_dir = tmp_path / "scr"
    (run_dir / "tables").mkdir(parents=True)
    for name in ("report.json", "report.md", "config.yaml", "tables/table2_confusion.csv"):
        (run_dir / name).write_text("x\n")
    report = {"variants": {"ensemble": {"sensitivity": 0.99, "specificity": 0.5, "auroc": float("nan")}}}
    run_id = log_to_mlflow(cfg, run_dir, report)
    assert "MLFLOW_TRACKING_URI" not in os.environ
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.data.metrics == {"ensemble_sensitivity": 0.99, "ensemble_specificity": 0.5}
    assert run.data.tags["cxrlab.kind"] == "screening" and run.data.params["name"] == "scr"
    assert {a.path for a in client.list_artifacts(run_id)} >= {"report.json", "tables"}
