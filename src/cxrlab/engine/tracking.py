"""MLflow logging of finished runs.

The tracking store is ``MLFLOW_TRACKING_URI`` when set, otherwise a local file store
under the run root (``<output.root>/mlruns``), so ``mlflow ui --backend-store-uri
<output.root>/mlruns`` lists every run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from cxrlab.config import ExperimentConfig

log = logging.getLogger(__name__)


def tracking_uri(root: str | Path) -> str:
    """The MLflow tracking URI for a run root."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return (Path(root).resolve() / "mlruns").as_uri()


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, item in enumerate(value):
            _flatten(f"{prefix}.{i}", item, out)
    else:
        out[prefix] = value


def _metric_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)


def log_run(run_dir: Path, cfg: ExperimentConfig, metrics: dict[str, Any]) -> str | None:
    """Log params, per-task metrics, history and artifacts of a run; returns the MLflow run id."""
    import csv
    import math

    import mlflow

    run_dir = Path(run_dir)
    mlflow.set_tracking_uri(tracking_uri(cfg.output.root))
    mlflow.set_experiment(cfg.output.experiment)
    params: dict[str, Any] = {}
    _flatten("", cfg.to_dict(), params)
    with mlflow.start_run(run_name=cfg.name) as active:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.set_tags({"cxrlab.run_dir": str(run_dir.resolve()), "cxrlab.kind": "classification"})
        history = run_dir / "history.csv"
        if history.is_file():
            with history.open(newline="") as fh:
                for step, row in enumerate(csv.DictReader(fh)):
                    for key, value in row.items():
                        if key in ("phase", "epoch", "global_step") or value in ("", None):
                            continue
                        mlflow.log_metric(_metric_name(key), float(value), step=step)
        for split in ("valid", "test"):
            block = metrics.get(split)
            if not isinstance(block, dict):
                continue
            mean = block.get("mean_auroc")
            if mean is not None and not math.isnan(mean):
                mlflow.log_metric(f"{split}_mean_auroc", float(mean))
            for task, report in block.get("tasks", {}).items():
                for key in ("auroc", "auroc_ci_low", "auroc_ci_high"):
                    value = report.get(key)
                    if value is not None and not math.isnan(value):
                        mlflow.log_metric(_metric_name(f"{split}_{key}/{task}"), float(value))
        for name in ("config.yaml", "metrics.json", "history.csv", "split.json", "best.json"):
            if (run_dir / name).is_file():
                mlflow.log_artifact(str(run_dir / name))
        for path in sorted(run_dir.glob("predictions_*.csv")):
            mlflow.log_artifact(str(path))
        for folder in sorted(run_dir.glob("curves_*")):
            mlflow.log_artifacts(str(folder), artifact_path=folder.name)
        run_id = active.info.run_id
    (run_dir / "mlflow_run_id.txt").write_text(run_id + "\n")
    log.info("logged run %s to MLflow at %s", run_id, tracking_uri(cfg.output.root))
    return run_id
