"""A whole screening run: recipe -> data -> networks -> SVM -> reports -> ablations, and the demo."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cxrlab.config.screening import (
    ScreeningConfig,
    load_screening_config,
    save_screening_config,
    screening_config_from_dict,
)
from cxrlab.data.synthetic_screening import write_screening_dataset
from cxrlab.engine.distributed import rank_zero_first
from cxrlab.errors import ConfigError, MissingFileError
from cxrlab.inference.screening import load_variant
from cxrlab.runs.rundir import claim_run_directory, process_rank, run_status
from cxrlab.tasks.screening.data import prepare_screening_data
from cxrlab.tasks.screening.evaluate import evaluate_screening
from cxrlab.tasks.screening.train import train_networks
from cxrlab.utils import atomic_write_json

log = logging.getLogger(__name__)


def run_directory(cfg: ScreeningConfig) -> Path:
    return Path(cfg.output.root) / cfg.name


def train_screening(cfg: ScreeningConfig, report: Callable[[str], None] | None = None,
                    overwrite: bool = False, resume: bool = False) -> Path:
    """Train every variant, fit the SVMs, evaluate, run ablations; returns the run directory.

    With ``train.devices > 1`` the networks train under DDP: the other ranks re-run the
    command, train each network alongside rank 0 and stop there; rank 0 alone writes the
    folder, fits the SVMs, evaluates and logs to MLflow. ``resume`` continues a killed run
    in its folder (trained networks kept, the interrupted one from its last epoch).

    Raises:
        ConfigError: The run directory exists and neither ``overwrite`` nor ``resume`` is
            set, or the recipe cannot run on its data.
    """
    run_dir = claim_run_directory(run_directory(cfg), overwrite=overwrite and not resume, resume=resume,
                                  hint="pass --overwrite or --resume", kind="screening")
    if process_rank() > 0:
        # A DDP worker: train the networks (and the ablations' networks) with rank 0, write nothing.
        with rank_zero_first():
            data = prepare_screening_data(cfg)
        train_networks(cfg, data, run_dir, None, resume)
        if cfg.ablations:
            run_ablations(cfg, run_dir, None, resume)
        return run_dir
    save_screening_config(cfg, run_dir / "config.yaml")
    with run_status(run_dir) as status:
        with rank_zero_first():    # an ablation inside a DDP run: rank 0 builds its cache first
            data = prepare_screening_data(cfg)
        atomic_write_json(run_dir / "split.json", {
            **{part: int(rows.size) for part, rows in data.parts.items()},
            **{f"eval/{name}": int(s.rows.size) for name, s in data.eval_sets.items()}})
        from cxrlab.tasks.screening.svm import fit_second_classifier

        train_networks(cfg, data, run_dir, report, resume)
        for variant in cfg.model.variants:
            fit_second_classifier(cfg, data, load_variant(run_dir, variant,
                                                          list(cfg.data.diseases)),
                                  run_dir / variant)
        summary = evaluate_screening(run_dir, cfg=cfg, data=data)
        if cfg.ablations:
            run_ablations(cfg, run_dir, report, resume)
            summary = evaluate_screening(run_dir, cfg=cfg, data=data)
        status.finished()
        if cfg.output.mlflow:
            from cxrlab.tasks.screening.evaluate import log_to_mlflow

            log_to_mlflow(cfg, run_dir, summary)
    return run_dir


def run_ablations(cfg: ScreeningConfig, run_dir: Path,
                  report: Callable[[str], None] | None = None, resume: bool = False) -> list[Path]:
    """Train the ensemble once per configured ablation into ``RUN/ablations/<name>``."""
    cache = cfg.data.cache or str(Path(cfg.output.root) / "cache")
    done = []
    for ablation in cfg.ablations:
        if not ablation.name:
            raise ConfigError("ablations", "every ablation needs a name")
        sub = screening_config_from_dict(cfg.to_dict(), [
            *ablation.overrides, f"name={ablation.name}", f"output.root={run_dir / 'ablations'}",
            "ablations=[]", "model.variants=[ensemble]", "output.mlflow=false",
            f"data.cache={cache}"])
        if report is not None:
            report(f"ablation {ablation.name}: {' '.join(ablation.overrides)}")
        done.append(train_screening(sub, report, overwrite=True, resume=resume))
    return done


DEMO_CONFIG = Path(__file__).resolve().parents[4] / "configs" / "demo_screening.yaml"


def run_screening_demo(out: str | Path, n_images: int = 600, n_external: int = 240,
                       size: int | None = None, overrides: Sequence[str] = (),
                       report: Callable[[str], None] | None = None,
                       valid_fraction: float = 0.25, test_fraction: float = 0.2
                       ) -> dict[str, Any]:
    """Phantom data, the ensemble and the shared variant trained on CPU, reports written.

    Writes ``out/data`` and ``out/external`` (SYNTHETIC phantoms), the run directory
    ``out/<name>`` and ``out/report.json`` with ``sensitivity``, ``specificity``,
    ``unseen_predicted_normal_rate`` (internal test set and unseen-disease images, ensemble),
    the shared variant's figures, the inference cost and the paths of the tables.
    ``valid_fraction`` / ``test_fraction`` split the main set by patient (the rest trains;
    larger validation and test shares cost inference only).
    """
    if not DEMO_CONFIG.is_file():
        raise MissingFileError(DEMO_CONFIG, "demo recipe not found; run the demo from a source "
                                            "checkout (pip install -e .)")
    out = Path(out)
    started = time.perf_counter()
    probe = load_screening_config(DEMO_CONFIG, list(overrides))
    size = int(size or probe.data.size)
    if report is not None:
        report(f"writing {n_images} + {n_external} SYNTHETIC phantoms ({size} px)")
    seen = [f.lower() for f in probe.data.diseases]
    unseen = [f.lower() for f in probe.data.unseen]
    main = write_screening_dataset(out / "data", n_images, size, seed=0, seen=seen,
                                   unseen=unseen, valid_fraction=valid_fraction,
                                   test_fraction=test_fraction, overwrite=True)
    external = write_screening_dataset(out / "external", n_external, size, seed=1, seen=seen,
                                       unseen=unseen, weak_fraction=0.0, unseen_fraction=0.15,
                                       overwrite=True)
    cfg = load_screening_config(DEMO_CONFIG, [
        f"data.options.csv={main / 'labels.csv'}",
        f"data.eval_sets.external.options.csv={external / 'labels.csv'}",
        f"data.size={size}", f"output.root={out}", *overrides])
    run_dir = train_screening(cfg, report, overwrite=True)
    full = json.loads((run_dir / "report.json").read_text())
    shared = full["variants"].get("shared", {})
    summary = {
        "sensitivity": full["sensitivity"], "specificity": full["specificity"],
        "unseen_predicted_normal_rate": full["unseen_predicted_normal_rate"],
        "normal_predicted_normal_rate": full["normal_predicted_normal_rate"],
        "auroc": full["auroc"],
        "operating_point": full["variants"][full["primary_variant"]]["operating_point"],
        "shared_encoder": {k: shared.get(k) for k in ("sensitivity", "specificity", "auroc",
                                                      "unseen_predicted_normal_rate")},
        "cost": full["cost"], "tables": full["tables"], "report_md": full["report_md"],
        "run_dir": str(run_dir), "seconds": round(time.perf_counter() - started, 1),
        "data": "SYNTHETIC phantoms",
    }
    atomic_write_json(out / "report.json", summary)
    return summary
