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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrlab.config.screening import ScreeningConfig, load_screening_config
from cxrlab.data.screening import abnormal_truth
from cxrlab.engine.distributed import torch_threads
from cxrlab.engine.screening import (
    inference_cost_table,
    measure_inference,
    resolve_device,
)
from cxrlab.engine.tracking import _flatten, mlflow_run
from cxrlab.errors import MissingFileError, SkipLog
from cxrlab.inference.screening import (
    _softmax,
    abnormal_probability,
    load_second_classifier,
    load_variant,
)
from cxrlab.metrics.classification import auroc
from cxrlab.metrics.screening import (
    predicted_normal_rate,
    risk_group_counts,
    screening_confusion,
    unseen_distribution,
)
from cxrlab.tasks.screening.data import (
    ScreeningData,
    prepare_screening_data,
    unseen_rows,
)
from cxrlab.tasks.screening.train import variant_logits
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


def _variant_report(cfg: ScreeningConfig, data: ScreeningData, run_dir: Path, variant: str
                    ) -> tuple[dict[str, Any], list[pd.DataFrame]]:
    """Scores and tables of one variant over every evaluation set."""
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


# ----------------------------------------------------------------------------- tracking


def log_to_mlflow(cfg: ScreeningConfig, run_dir: Path, report: dict[str, Any]) -> str:
    """Log parameters, headline metrics and the report files of a run to MLflow."""
    import mlflow


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


