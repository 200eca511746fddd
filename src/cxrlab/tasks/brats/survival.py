"""Overall-survival regression from the segmentation (seed 004 poster: age and the tumour-brain centroid distance).

Features per case: age, the distance in mm between the centroids of the whole tumour and
the brain (through the affine, so anisotropic voxels count right), and the WT / TC / ET
volumes in ml. A scikit-learn regressor (the recipe's ``survival.regressor``) is scored
by K-fold cross-validation on the cases with a known survival (no ``ALIVE`` rows; only
gross-total resections when the extent of resection is known, as BraTS 2019+ scored):
3-class accuracy (short < 10 months, mid 10-15, long > 15; 30.44 days a month), mean
and median squared error (days^2) and Spearman's rho, next to predicting the training
folds' median.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from cxrlab.config.brats import SurvivalConfig, config_from_mapping
from cxrlab.data.datasets.brats import BratsCase, region_masks
from cxrlab.errors import ConfigError, MissingFileError
from cxrlab.inference.brats import BratsPredictor
from cxrlab.tasks.brats.data import open_dataset
from cxrlab.utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

DAYS_PER_MONTH = 30.44
CLASS_EDGES_DAYS = (10 * DAYS_PER_MONTH, 15 * DAYS_PER_MONTH)


def survival_class(days: np.ndarray) -> np.ndarray:
    """0 short (< 10 months), 1 mid (10-15 months), 2 long (> 15 months)."""
    return np.digitize(np.asarray(days, dtype=float), CLASS_EDGES_DAYS, right=False)


def case_features(case: BratsCase, canonical: np.ndarray) -> dict[str, float]:
    """Age, WT-brain centroid distance (mm) and region volumes (ml) of one case's segmentation.

    Raises:
        ConfigError: The case has no survival row (no age).
    """
    if case.survival is None:
        raise ConfigError(case.case_id, "the case has no survival row (age unknown)")
    voxel_ml = float(np.prod(case.spacing)) / 1000.0
    brain = np.argwhere(np.any(case.image != 0, axis=0))
    regions = region_masks(canonical)
    tumour = np.argwhere(regions["WT"])

    def world(points: np.ndarray) -> np.ndarray:
        return case.affine[:3, :3] @ points.mean(0) + case.affine[:3, 3]

    distance = float(np.linalg.norm(world(tumour) - world(brain))) if len(tumour) and len(brain) else 0.0
    return {"age": float(case.survival.age), "distance_mm": distance,
            **{f"{r.lower()}_ml": float(m.sum()) * voxel_ml for r, m in regions.items()}}


def make_regressor(cfg: SurvivalConfig) -> Any:
    """A scikit-learn pipeline: standardisation, then the recipe's regressor."""
    from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVR

    options = dict(cfg.options)
    if cfg.regressor == "random_forest":
        model = RandomForestRegressor(**{"n_estimators": 200, "min_samples_leaf": 3, "random_state": cfg.seed,
                                         **options})
    elif cfg.regressor == "gradient_boosting":
        model = GradientBoostingRegressor(**{"random_state": cfg.seed, "max_depth": 2, **options})
    elif cfg.regressor == "svr":
        model = SVR(**{"C": 300.0, **options})
    else:
        model = LinearRegression(**options)
    return make_pipeline(StandardScaler(), model)


def survival_scores(true_days: np.ndarray, pred_days: np.ndarray) -> dict[str, float]:
    """BraTS's survival scores: 3-class accuracy, MSE, median SE, Spearman's rho."""
    from scipy.stats import spearmanr

    se = (np.asarray(true_days, float) - np.asarray(pred_days, float)) ** 2
    rho = spearmanr(true_days, pred_days).statistic if np.std(pred_days) > 0 else float("nan")
    return {"accuracy": float(np.mean(survival_class(true_days) == survival_class(pred_days))),
            "mse": float(se.mean()), "median_se": float(np.median(se)), "spearman": float(rho)}


def cross_validate_survival(features: pd.DataFrame, cfg: SurvivalConfig) -> dict[str, Any]:
    """K-fold predictions of ``days`` from ``cfg.features``; scores of the model and of the training median.

    Raises:
        ConfigError: Fewer cases than folds (or than 4).
    """
    from sklearn.model_selection import KFold

    n = len(features)
    folds = min(int(cfg.folds), n)
    if n < 4 or folds < 2:
        raise ConfigError("survival", f"{n} usable survival case(s) are too few for cross-validation")
    x = features[list(cfg.features)].to_numpy(float)
    y = features["days"].to_numpy(float)
    model_pred, median_pred = np.zeros(n), np.zeros(n)
    for train_idx, test_idx in KFold(folds, shuffle=True, random_state=cfg.seed).split(x):
        regressor = make_regressor(cfg).fit(x[train_idx], y[train_idx])
        model_pred[test_idx] = regressor.predict(x[test_idx])
        median_pred[test_idx] = np.median(y[train_idx])
    return {"n_cases": n, "folds": folds, "regressor": cfg.regressor, "features": list(cfg.features),
            "model": survival_scores(y, model_pred), "median_baseline": survival_scores(y, median_pred),
            "predictions": model_pred}


def survival_run(run_dir: str | Path, source: str | None = None) -> dict[str, Any]:
    """Features of every usable survival case of a run's dataset, cross-validated regression; writes
    ``survival.json`` and ``survival_features.csv``.

    Args:
        run_dir: A finished ``brats train`` run.
        source: ``predicted`` or ``reference`` (default: the recipe's ``survival.source``).

    Raises:
        MissingFileError: Not a run folder.
        ConfigError: The dataset has no survival CSV or too few usable cases.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise MissingFileError(run_dir / "config.yaml", "not a BraTS run folder")
    cfg = config_from_mapping(yaml.safe_load((run_dir / "config.yaml").read_text()) or {})
    scfg = cfg.survival
    source = source or scfg.source
    dataset = open_dataset(cfg)
    if not dataset.survival:
        raise ConfigError(str(dataset.root), "no survival CSV (survival_info.csv / survival_data.csv or "
                                             "data.survival_csv)")
    predictor = BratsPredictor.from_run_dir(run_dir) if source == "predicted" else None
    rows, excluded = [], {"censored_or_unknown": 0, "not_gtr": 0, "no_images": 0}
    present = set(dataset.case_ids)
    for case_id, row in dataset.survival.items():
        if case_id not in present:
            excluded["no_images"] += 1
            continue
        if row.days is None or row.censored:
            excluded["censored_or_unknown"] += 1
            continue
        if scfg.gtr_only and row.resection is not None and row.resection != "GTR":
            excluded["not_gtr"] += 1
            continue
        case = dataset.load(case_id, with_label=source == "reference")
        if source == "reference" and case.label is None:
            raise ConfigError(case_id, "survival.source=reference needs the case's segmentation")
        canonical = predictor.predict(case) if predictor is not None else case.label
        rows.append({"case": case_id, **case_features(case, canonical), "days": float(row.days)})
    features = pd.DataFrame(rows)
    result = cross_validate_survival(features, scfg)
    features["predicted_days"] = result.pop("predictions")
    result.update({"source": source, "excluded": excluded, "skipped_rows": dataset.skips.count})
    atomic_write_text(run_dir / "survival_features.csv", features.to_csv(index=False))
    atomic_write_json(run_dir / "survival.json", result)
    return result


def survival_table(result: dict[str, Any]) -> str:
    """Markdown: model vs training-median baseline."""
    lines = [f"**survival, {result['n_cases']} cases, {result['folds']}-fold CV, {result['regressor']} on "
             f"{', '.join(result['features'])} ({result['source']} segmentations)**", "",
             "| predictor | 3-class accuracy | MSE (days²) | median SE (days²) | Spearman ρ |",
             "|---|---:|---:|---:|---:|"]
    for name, key in (("model", "model"), ("training median", "median_baseline")):
        s = result[key]
        lines.append(f"| {name} | {s['accuracy']:.3f} | {s['mse']:.0f} | {s['median_se']:.0f} | "
                     f"{'n/a' if s['spearman'] != s['spearman'] else format(s['spearman'], '.3f')} |")
    return "\n".join(lines) + "\n"
