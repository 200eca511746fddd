"""The second classifier of seed 003: an SVM on the networks' logits and its operating point
at a target sensitivity, chosen on validation images."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cxrlab.config.screening import (
    ScreeningConfig,
    load_screening_config,
    save_screening_config,
)
from cxrlab.engine.distributed import torch_threads
from cxrlab.errors import ConfigError, MissingFileError, SkipLog
from cxrlab.inference.screening import load_second_classifier, load_variant
from cxrlab.metrics.classification import threshold_at_sensitivity
from cxrlab.metrics.screening import screening_confusion
from cxrlab.tasks.screening.data import ScreeningData, prepare_screening_data
from cxrlab.tasks.screening.evaluate import _evaluate
from cxrlab.tasks.screening.train import variant_logits
from cxrlab.utils import atomic_write, atomic_write_json

log = logging.getLogger(__name__)


def fit_svm(cfg: ScreeningConfig, features: np.ndarray, truth: np.ndarray):
    """``StandardScaler`` + ``SVC`` fitted on rows with a known normal/abnormal truth."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    keep = ~np.isnan(truth)
    y = truth[keep].astype(int)
    if len(np.unique(y)) < 2:
        raise ConfigError("svm.fit_on", "the SVM's training rows need normal and abnormal images")
    s = cfg.svm
    class_weight = dict(s.class_weight) if isinstance(s.class_weight, Mapping) else s.class_weight
    if isinstance(class_weight, dict):
        class_weight = {int(k): float(v) for k, v in class_weight.items()}
    try:
        svm = make_pipeline(StandardScaler(), SVC(kernel=s.kernel, C=s.C, gamma=s.gamma,
                                                  degree=s.degree, class_weight=class_weight))
        return svm.fit(features[keep], y)
    except (ValueError, TypeError) as err:
        raise ConfigError("svm", f"cannot fit the SVM: {err}") from err


def choose_operating_point(truth: np.ndarray, scores: np.ndarray, target: float
                           ) -> dict[str, float]:
    """Threshold on the SVM score reaching ``target`` sensitivity on these rows, the
    sensitivity/specificity there, and a Platt fit (``p = sigmoid(a * score + b)``).

    The highest threshold reaching the target sits exactly on an abnormal case's score;
    the threshold returned is the midpoint between that score and the next lower score
    of these rows, so every row gets the same call (same sensitivity and specificity
    here) while the boundary keeps a margin from the abnormal case it must not miss.
    ``upper_threshold`` keeps the highest one.
    """
    from sklearn.linear_model import LogisticRegression


    keep = ~np.isnan(truth)
    upper = threshold_at_sensitivity(truth[keep], scores[keep], target)
    below = scores[keep][scores[keep] < upper]
    threshold = (upper + below.max()) / 2.0 if below.size else upper
    pred = (scores >= threshold).astype(float)
    confusion = screening_confusion(truth, pred)
    platt = LogisticRegression(C=1e4).fit(scores[keep, None], truth[keep].astype(int))
    return {"threshold": float(threshold), "upper_threshold": float(upper),
            "target_sensitivity": float(target),
            "sensitivity": confusion["sensitivity"], "specificity": confusion["specificity"],
            "platt_a": float(platt.coef_[0, 0]), "platt_b": float(platt.intercept_[0]),
            "n": confusion["n"]}


def fit_second_classifier(cfg: ScreeningConfig, data: ScreeningData, nets: list[Any],
                          out: Path) -> tuple[Any, dict[str, float]]:
    """Fit the SVM on logits, choose the operating point on ``valid``, save both in ``out``."""
    import pickle


    fit_rows = (np.concatenate([data.parts["hard_train"], data.parts["weak_train"]])
                if cfg.svm.fit_on == "train" else data.parts["valid"])
    logits = variant_logits(cfg, nets, data.store, fit_rows)
    svm = fit_svm(cfg, logits.reshape(len(fit_rows), -1), data.truth[fit_rows])
    point = _validation_point(cfg, data, nets, svm)
    atomic_write(out / "svm.pkl", lambda tmp: tmp.write_bytes(pickle.dumps(svm)))
    atomic_write_json(out / "operating_point.json", point)
    return svm, point


def _validation_point(cfg: ScreeningConfig, data: ScreeningData, nets: list[Any],
                      svm: Any) -> dict[str, float]:
    """The operating point for ``cfg.svm.target_sensitivity`` on the validation images."""
    valid = data.parts["valid"]
    scores = svm.decision_function(variant_logits(cfg, nets, data.store, valid)
                                   .reshape(len(valid), -1))
    return choose_operating_point(data.truth[valid], scores, cfg.svm.target_sensitivity)


def move_operating_point(run_dir: str | Path, target_sensitivity: float,
                         measure_cost: bool = True) -> dict[str, Any]:
    """Re-pick every variant's operating point of a trained run for a new target sensitivity.

    The networks and the SVMs stay as trained: the validation images are scored again and
    the threshold is chosen for ``target_sensitivity`` as in training. The run's
    ``config.yaml`` records the new target, each ``operating_point.json`` is replaced
    (atomically), and the run is re-evaluated.

    Returns:
        The new ``report.json`` contents (see :func:`evaluate_screening`).

    Raises:
        MissingFileError: Not a screening run directory or no trained variant.
        ConfigError: A target outside (0, 1].
    """
    run_dir = Path(run_dir)
    if not 0.0 < float(target_sensitivity) <= 1.0:
        raise ConfigError("--target-sensitivity", f"must lie in (0, 1], got {target_sensitivity}")
    if not (run_dir / "config.yaml").is_file():
        raise MissingFileError(run_dir / "config.yaml", "not a screening run directory")
    cfg = load_screening_config(run_dir / "config.yaml",
                                [f"svm.target_sensitivity={float(target_sensitivity)!r}"])
    variants = [v for v in cfg.model.variants if (run_dir / v / "svm.pkl").is_file()]
    if not variants:
        raise MissingFileError(run_dir, "no trained variant (ensemble/ or shared/ with svm.pkl)")
    with torch_threads(cfg.train.threads):
        data = prepare_screening_data(cfg, SkipLog(cfg.data.on_error))
        for variant in variants:
            svm, old = load_second_classifier(run_dir, variant)
            point = _validation_point(cfg, data, load_variant(run_dir, variant, list(cfg.data.diseases)), svm)
            atomic_write_json(run_dir / variant / "operating_point.json", point)
            log.info("%s: threshold %.4f -> %.4f (target sensitivity %s -> %s)", variant,
                     old["threshold"], point["threshold"], old["target_sensitivity"],
                     point["target_sensitivity"])
        save_screening_config(cfg, run_dir / "config.yaml")
        return _evaluate(run_dir, cfg, data, measure_cost)
