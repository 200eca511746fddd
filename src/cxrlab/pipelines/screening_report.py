"""Screening reports, ablations, inference cost, prediction and the phantom demo.

:func:`evaluate_screening` scores every trained variant of a run directory on every
evaluation set and writes the tables a radiology department asks for, as CSV and
markdown (``RUN/tables/``, ``RUN/report.md``) and JSON (``RUN/report.json``):

* ``table2_confusion`` — AI normal/abnormal vs reference per evaluation set (Table 2);
* ``table3_risk_groups`` — AI normal / target / others per risk group (Tables 3, 8);
* ``table9_unseen`` — per-model class shares on diseases never trained on (Table 9);
* ``ablations`` — sensitivity, specificity, AUROC, accuracy per ablation (Tables 5-7);
* ``cost`` — inference cost of the per-disease ensemble vs the shared encoder.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrlab.data.screening import abnormal_truth
from cxrlab.errors import ConfigError, InputError, MissingFileError, SkipLog
from cxrlab.metrics.screening import (predicted_normal_rate, risk_group_counts,
                                      screening_confusion, unseen_distribution)
from cxrlab.engine.screening import (inference_cost_table, measure_inference, resolve_device,
                                     torch_threads)
from cxrlab.pipelines.screening import (ScreeningConfig, ScreeningData, load_screening_config,
                                        load_variant, prepare_screening_data,
                                        screening_config_from_dict, train_screening,
                                        unseen_rows, variant_logits)
from cxrlab.utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)
CLASS_NAMES = {3: ("normal", "target", "others"), 2: ("not_target", "target")}


def _column(dataset: Any, names: Sequence[str]) -> np.ndarray:
    """Labels of ``names`` in ``dataset`` (NaN columns for names it does not have)."""
    out = np.full((len(dataset), len(names)), np.nan, dtype=np.float32)
    for k, name in enumerate(names):
        if name in dataset.pathologies:
            out[:, k] = dataset.labels[:, dataset.pathologies.index(name)]
    return out


def _score_set(cfg: ScreeningConfig, nets: list[Any], svm: Any, point: dict[str, float],
               eval_set: Any) -> dict[str, Any]:
    """Logits, SVM score, decision and reference of one evaluation set."""
    rows = eval_set.rows
    logits = variant_logits(cfg, nets, eval_set.store, rows)
    scores = (svm.decision_function(logits.reshape(len(rows), -1)) if len(rows)
              else np.zeros(0))
    return {"rows": rows, "logits": logits, "scores": scores,
            "pred": (scores >= point["threshold"]).astype(float),
            "truth": abnormal_truth(eval_set.dataset.labels)[rows],
            "diseases": _column(eval_set.dataset, cfg.data.diseases)[rows],
            "unseen": _column(eval_set.dataset, cfg.data.unseen)[rows],
            "unseen_any": unseen_rows(eval_set.dataset, tuple(cfg.data.unseen))[rows]}


def _predictions_frame(cfg: ScreeningConfig, eval_set: Any, scored: dict[str, Any],
                       point: dict[str, float]) -> pd.DataFrame:
    names = CLASS_NAMES[cfg.model.num_classes]
    frame = pd.DataFrame({"path": eval_set.dataset.table["path"].to_numpy()[scored["rows"]],
                          "abnormal_truth": scored["truth"], "svm_score": scored["scores"],
                          "abnormal_probability": abnormal_probability(scored["scores"], point),
                          "abnormal_pred": scored["pred"].astype(int)})
    probs = _softmax(scored["logits"])
    for d, disease in enumerate(cfg.data.diseases):
        frame[f"truth/{disease}"] = scored["diseases"][:, d]
        frame[f"class/{disease}"] = [names[c] for c in probs[:, d].argmax(axis=1)]
        for k, name in enumerate(names):
            frame[f"p_{name}/{disease}"] = probs[:, d, k]
    return frame


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def _variant_report(cfg: ScreeningConfig, data: ScreeningData, run_dir: Path, variant: str
                    ) -> tuple[dict[str, Any], list[pd.DataFrame]]:
    """Scores and tables of one variant over every evaluation set."""
    from cxrlab.metrics.classification import auroc

    nets = load_variant(run_dir, variant, list(cfg.data.diseases))
    svm, point = load_second_classifier(run_dir, variant)
    confusion_rows, risk_tables, unseen_tables = [], [], []
    unseen_pred: list[np.ndarray] = []
    sets: dict[str, Any] = {}
    for name, eval_set in data.eval_sets.items():
        scored = _score_set(cfg, nets, svm, point, eval_set)
        frame = _predictions_frame(cfg, eval_set, scored, point)
        atomic_write_text(run_dir / "predictions" / f"{variant}_{name}.csv",
                          frame.to_csv(index=False))
        confusion = screening_confusion(scored["truth"], scored["pred"])
        known = ~np.isnan(scored["truth"])
        has_both = known.any() and 0 < scored["truth"][known].sum() < known.sum()
        confusion["auroc"] = (auroc(scored["truth"][known], scored["scores"][known])
                              if has_both else float("nan"))
        correct = (scored["pred"][known] == scored["truth"][known])
        confusion["accuracy"] = float(correct.mean()) if known.any() else float("nan")
        sets[name] = confusion
        confusion_rows.append({"variant": variant, "set": name, **confusion})
        classes = scored["logits"].argmax(axis=-1)
        if name != "unseen":
            table = risk_group_counts(scored["pred"], classes, scored["diseases"],
                                      cfg.data.diseases, cfg.risk_groups, cfg.model.num_classes)
            risk_tables.append(table.rename_axis("ai").reset_index()
                               .assign(variant=variant, set=name))
        if scored["unseen_any"].any():
            unseen_pred.append(scored["pred"][scored["unseen_any"]])
            dist = unseen_distribution(classes[scored["unseen_any"]],
                                       scored["unseen"][scored["unseen_any"]],
                                       cfg.data.diseases, cfg.data.unseen, cfg.model.num_classes)
            unseen_tables.append(dist.reset_index().assign(variant=variant, set=name))
    internal = sets.get("internal", {})
    pred_unseen = np.concatenate(unseen_pred) if unseen_pred else np.zeros(0)
    summary = {"operating_point": point, "sets": sets,
               "sensitivity": internal.get("sensitivity"),
               "specificity": internal.get("specificity"),
               "auroc": internal.get("auroc"), "accuracy": internal.get("accuracy"),
               "normal_predicted_normal_rate": internal.get("specificity"),
               "unseen_predicted_normal_rate": predicted_normal_rate(pred_unseen),
               "n_unseen": int(pred_unseen.size)}
    return summary, [pd.DataFrame(confusion_rows), _concat(risk_tables), _concat(unseen_tables)]


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _markdown(frame: pd.DataFrame, digits: int = 3) -> str:
    if frame.empty:
        return "_(none)_\n"
    cells = frame.copy()
    for column in cells.columns:
        if pd.api.types.is_float_dtype(cells[column]):
            cells[column] = cells[column].map(lambda v: "n/a" if pd.isna(v) else f"{v:.{digits}f}")
    header = "| " + " | ".join(map(str, cells.columns)) + " |"
    rule = "|" + "---|" * len(cells.columns)
    body = ["| " + " | ".join(map(str, row)) + " |" for row in cells.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def evaluate_screening(run_dir: str | Path, cfg: ScreeningConfig | None = None,
                       data: ScreeningData | None = None, measure_cost: bool = True
                       ) -> dict[str, Any]:
    """Score a run's variants on every evaluation set; write predictions, tables, reports.

    Returns:
        The contents of ``RUN/report.json``: ``sensitivity``, ``specificity``,
        ``unseen_predicted_normal_rate`` (primary variant: the ensemble when trained),
        ``variants`` (per-variant summaries), ``ablations``, ``cost`` and ``tables``.

    Raises:
        MissingFileError: Not a screening run directory.
    """
    run_dir = Path(run_dir)
    if cfg is None:
        if not (run_dir / "config.yaml").is_file():
            raise MissingFileError(run_dir / "config.yaml", "not a screening run directory")
        cfg = load_screening_config(run_dir / "config.yaml")
    with torch_threads(cfg.train.threads):
        return _evaluate(run_dir, cfg, data, measure_cost)


def _evaluate(run_dir: Path, cfg: ScreeningConfig, data: ScreeningData | None,
              measure_cost: bool) -> dict[str, Any]:
    data = data or prepare_screening_data(cfg, SkipLog(cfg.data.on_error))
    variants = [v for v in cfg.model.variants if (run_dir / v / "svm.pkl").is_file()]
    if not variants:
        raise MissingFileError(run_dir, "no trained variant (ensemble/ or shared/ with svm.pkl)")
    summaries, tables = {}, {"table2_confusion": [], "table3_risk_groups": [],
                             "table9_unseen": []}
    for variant in variants:
        summaries[variant], frames = _variant_report(cfg, data, run_dir, variant)
        for key, frame in zip(tables, frames):
            tables[key].append(frame)
    merged = {key: _concat(frames) for key, frames in tables.items()}
    merged["ablations"] = ablation_table(run_dir, summaries.get("ensemble")
                                         or summaries[variants[0]])
    cost = (variant_costs(cfg, run_dir, variants) if measure_cost
            else pd.DataFrame())
    merged["cost"] = cost
    paths = {}
    for key, frame in merged.items():
        paths[key] = str(run_dir / "tables" / f"{key}.csv")
        atomic_write_text(paths[key], frame.to_csv(index=False))
        atomic_write_text(run_dir / "tables" / f"{key}.md", _markdown(frame))
    primary = summaries.get("ensemble") or summaries[variants[0]]
    report = {"sensitivity": primary["sensitivity"], "specificity": primary["specificity"],
              "unseen_predicted_normal_rate": primary["unseen_predicted_normal_rate"],
              "normal_predicted_normal_rate": primary["normal_predicted_normal_rate"],
              "auroc": primary["auroc"], "primary_variant": "ensemble" if "ensemble" in summaries
              else variants[0], "variants": summaries,
              "ablations": merged["ablations"].to_dict(orient="records"),
              "cost": cost.to_dict(orient="records"), "tables": paths,
              "report_md": str(run_dir / "report.md")}
    atomic_write_json(run_dir / "report.json", report)
    atomic_write_text(run_dir / "report.md", _report_markdown(cfg, report, merged))
    return report


def _report_markdown(cfg: ScreeningConfig, report: dict[str, Any],
                     tables: dict[str, pd.DataFrame]) -> str:
    titles = {"table2_confusion": "Normal/abnormal per evaluation set (seed 003 Table 2)",
              "table3_risk_groups": "AI normal / target / others per risk group (Tables 3, 8)",
              "table9_unseen": "Predictions on diseases never seen in training (Table 9)",
              "ablations": "Ablations (Tables 5-7)",
              "cost": "Inference cost: per-disease ensemble vs shared encoder"}
    lines = [f"# Normal screening report: {cfg.name}", "",
             f"Diseases: {', '.join(cfg.data.diseases)}; unseen: "
             f"{', '.join(cfg.data.unseen) or 'none'}.", ""]
    for variant, summary in report["variants"].items():
        point = summary["operating_point"]
        lines.append(f"- **{variant}**: operating point {point['threshold']:.4f} for target "
                     f"sensitivity {point['target_sensitivity']} (validation: sensitivity "
                     f"{point['sensitivity']:.3f}, specificity {point['specificity']:.3f}); "
                     f"internal sensitivity {_fmt(summary['sensitivity'])}, specificity "
                     f"{_fmt(summary['specificity'])}; unseen diseases called normal "
                     f"{_fmt(summary['unseen_predicted_normal_rate'])} (n={summary['n_unseen']})")
    for key, frame in tables.items():
        lines += ["", f"## {titles[key]}", "", _markdown(frame)]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) \
        else f"{value:.3f}"


# ----------------------------------------------------------------------------- ablations


def run_ablations(cfg: ScreeningConfig, run_dir: Path,
                  report: Callable[[str], None] | None = None) -> list[Path]:
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
        done.append(train_screening(sub, report, overwrite=True))
    return done


def ablation_table(run_dir: Path, baseline: dict[str, Any]) -> pd.DataFrame:
    """Baseline and every finished ablation sub-run: internal-set screening metrics."""
    cfg_overrides: dict[str, str] = {}
    config = run_dir / "config.yaml"
    if config.is_file():
        for ab in load_screening_config(config).ablations:
            cfg_overrides[ab.name] = " ".join(ab.overrides)
    rows = [{"ablation": "baseline", "overrides": "", **_metrics(baseline)}]
    for path in sorted((run_dir / "ablations").glob("*/report.json")):
        sub = json.loads(path.read_text())
        summary = sub["variants"].get("ensemble") or next(iter(sub["variants"].values()))
        rows.append({"ablation": path.parent.name,
                     "overrides": cfg_overrides.get(path.parent.name, ""), **_metrics(summary)})
    return pd.DataFrame(rows)


def _metrics(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: summary.get(k) for k in ("accuracy", "auroc", "specificity", "sensitivity",
                                        "unseen_predicted_normal_rate")}


# ----------------------------------------------------------------------------- second classifier
# The SVM of seed 003 §3.3.3 on the concatenated logits, and its operating point.


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

    from cxrlab.metrics.classification import threshold_at_sensitivity
    from cxrlab.metrics.screening import screening_confusion

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


def abnormal_probability(scores: np.ndarray, point: Mapping[str, float]) -> np.ndarray:
    """Platt-scaled probability of *abnormal* for SVM scores."""
    return 1.0 / (1.0 + np.exp(-(point["platt_a"] * np.asarray(scores) + point["platt_b"])))


def fit_second_classifier(cfg: ScreeningConfig, data: ScreeningData, nets: list[Any],
                          out: Path) -> tuple[Any, dict[str, float]]:
    """Fit the SVM on logits, choose the operating point on ``valid``, save both in ``out``."""
    import pickle

    from cxrlab.utils import atomic_write

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
    from cxrlab.pipelines.screening import save_screening_config

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


def load_second_classifier(run_dir: Path, variant: str) -> tuple[Any, dict[str, float]]:
    import pickle

    folder = Path(run_dir) / variant
    if not (folder / "svm.pkl").is_file():
        raise MissingFileError(folder / "svm.pkl", "no trained SVM; was the run finished?")
    svm = pickle.loads((folder / "svm.pkl").read_bytes())
    return svm, json.loads((folder / "operating_point.json").read_text())


def variant_costs(cfg: ScreeningConfig, run_dir: Path, variants: Sequence[str]) -> pd.DataFrame:
    """Inference cost of a run's trained variants at its image size (CPU or its device)."""
    device = str(resolve_device(cfg.train.device))
    rows = []
    for batch in cfg.output.cost_batch_sizes:
        for variant in variants:
            nets = load_variant(run_dir, variant, list(cfg.data.diseases))
            cost = measure_inference(nets, cfg.data.size, cfg.data.channels, int(batch),
                                     repeats=5, device=device)
            rows.append({"variant": variant, "encoder": cfg.model.encoder,
                         "diseases": len(cfg.data.diseases), "size": cfg.data.size,
                         "batch_size": int(batch), "device": device, "bf16": False, **cost})
    return inference_cost_table(rows)


# ----------------------------------------------------------------------------- prediction


def predict_screening(run_dir: str | Path, paths: Sequence[str | Path], variant: str | None = None,
                      skips: SkipLog | None = None, top: int = 3) -> pd.DataFrame:
    """Screen images with a trained run: normal/abnormal, probability, likely diseases, risk.

    Returns:
        One row per readable image: ``path``, ``decision`` (normal/abnormal),
        ``abnormal_probability``, ``svm_score``, ``threshold``, ``likely_diseases`` (up to
        ``top`` diseases by p(target), ``;``-separated, each with its probability) and
        ``risk_group`` (the first configured group holding a disease whose model predicts
        its target class, ``none`` for a normal call, ``unspecified`` otherwise).
    """
    import torch

    from cxrlab.data.screening import screening_preprocess
    from cxrlab.data.transforms import to_tensor
    from cxrlab.io import read_image

    run_dir = Path(run_dir)
    cfg = load_screening_config(run_dir / "config.yaml")
    variant = variant or ("ensemble" if "ensemble" in cfg.model.variants else cfg.model.variants[0])
    if variant not in cfg.model.variants:
        raise ConfigError("variant", f"run has variants {list(cfg.model.variants)}, not {variant!r}")
    nets = load_variant(run_dir, variant, list(cfg.data.diseases))
    svm, point = load_second_classifier(run_dir, variant)
    skips = skips or SkipLog("raise")
    pcfg = cfg.preprocess()
    records = []
    for path in paths:
        try:
            image = screening_preprocess(read_image(path).pixels, pcfg)
        except InputError as err:
            skips.handle(err)
            continue
        x = to_tensor(image, cfg.data.channels, cfg.data.normalization)[None]
        with torch.inference_mode():
            logits = np.concatenate([net(x, reconstruct=False)[0].reshape(1, -1, cfg.model.num_classes)
                                     .numpy() for net in nets], axis=1)
        score = float(svm.decision_function(logits.reshape(1, -1))[0])
        probs = _softmax(logits[0])
        p_target = probs[:, 1]
        order = np.argsort(-p_target)[:top]
        abnormal = score >= point["threshold"]
        found = {cfg.data.diseases[d] for d in range(len(cfg.data.diseases))
                 if probs[d].argmax() == 1}
        group = "none" if not abnormal else next(
            (g for g, members in cfg.risk_groups.items() if found & set(members)), "unspecified")
        records.append({"path": str(path), "decision": "abnormal" if abnormal else "normal",
                        "abnormal_probability": float(abnormal_probability(score, point)),
                        "svm_score": score, "threshold": point["threshold"],
                        "likely_diseases": ";".join(f"{cfg.data.diseases[d]}={p_target[d]:.3f}"
                                                    for d in order),
                        "risk_group": group})
    return pd.DataFrame(records, columns=["path", "decision", "abnormal_probability", "svm_score",
                                          "threshold", "likely_diseases", "risk_group"])


# ----------------------------------------------------------------------------- tracking


def log_to_mlflow(cfg: ScreeningConfig, run_dir: Path, report: dict[str, Any]) -> str:
    """Log parameters, headline metrics and the report files of a run to MLflow."""
    import mlflow

    from cxrlab.engine.tracking import _flatten, mlflow_run

    params: dict[str, Any] = {}
    _flatten("", cfg.to_dict(), params)
    with mlflow_run(cfg.output.root, cfg.output.experiment, cfg.name,
                    tags={"cxrlab.run_dir": str(run_dir.resolve()), "cxrlab.kind": "screening"}) as active:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        for variant, summary in report["variants"].items():
            for key in ("sensitivity", "specificity", "auroc", "unseen_predicted_normal_rate"):
                value = summary.get(key)
                if value is not None and np.isfinite(value):
                    mlflow.log_metric(f"{variant}_{key}", float(value))
        for name in ("report.json", "report.md", "config.yaml"):
            mlflow.log_artifact(str(run_dir / name))
        mlflow.log_artifacts(str(run_dir / "tables"), artifact_path="tables")
        return active.info.run_id


# ----------------------------------------------------------------------------- demo

DEMO_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "demo_screening.yaml"


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
    from cxrlab.data.synthetic_screening import write_screening_dataset

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
