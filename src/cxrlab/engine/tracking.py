"""MLflow logging of finished runs.

The tracking store is ``MLFLOW_TRACKING_URI`` when set, otherwise a local SQLite store
under the run root (``<output.root>/mlflow.db``, artifacts in ``<output.root>/mlartifacts``;
MLflow 3 no longer accepts new runs in a plain file store), so
``mlflow ui --backend-store-uri sqlite:///<output.root>/mlflow.db`` lists every run.
"""

from __future__ import annotations

import contextlib
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
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def _experiment(name: str, root: str | Path, local_store: bool) -> str:
    """Id of the experiment ``name``; in the local store its artifacts go under the run root."""
    import mlflow

    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = (Path(root).resolve() / "mlartifacts").as_uri() if local_store else None
    return mlflow.create_experiment(name, artifact_location=location)


@contextlib.contextmanager
def mlflow_run(root: str | Path, experiment: str, run_name: str, tags: dict[str, str] | None = None):
    """Start an MLflow run in the run root's store (or ``MLFLOW_TRACKING_URI``'s).

    MLflow 3 exports the URI given to ``set_tracking_uri`` into the environment; this
    restores the environment afterwards, so the next run (in the same process) still
    knows whether the user chose a tracking server.

    Yields:
        The active ``mlflow.ActiveRun``.
    """
    import mlflow

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        mlflow.set_tracking_uri(tracking_uri(root))
        experiment_id = _experiment(experiment, root, local_store=not previous)
        with mlflow.start_run(run_name=run_name, experiment_id=experiment_id) as active:
            if tags:
                mlflow.set_tags(tags)
            yield active
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


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
    params: dict[str, Any] = {}
    _flatten("", cfg.to_dict(), params)
    tags = {"cxrlab.run_dir": str(run_dir.resolve()), "cxrlab.kind": "classification"}
    with mlflow_run(cfg.output.root, cfg.output.experiment, cfg.name, tags) as active:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
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
