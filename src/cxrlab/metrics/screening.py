"""Tables of seed 003's normal screening, as pure functions of predictions and labels.

* :func:`screening_confusion` — normal/abnormal confusion matrix of one evaluation set
  (Table 2) with sensitivity (abnormal called abnormal) and specificity (normal called
  normal);
* :func:`risk_group_counts` — per risk group (critical, urgent, non-urgent,
  cardiomegaly; seed 003 Table 1), how many abnormal images the AI called normal, found
  by the model of one of their diseases (*target*) or flagged by another model only
  (*others*) (Tables 3 and 8);
* :func:`unseen_distribution` — for diseases never seen in training, the share of their
  images each per-disease model calls normal / target / others (Table 9);
* :func:`predicted_normal_rate` — the share of a group of images called normal.

Inputs are numpy arrays; outputs are plain dicts or :class:`pandas.DataFrame`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from cxrlab.errors import InputError

CLASS_LABELS = {3: ("normal", "target", "others"), 2: ("normal", "target")}
AI_ROWS = ("normal", "target", "others")


def _binary(values: np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = values[~np.isnan(values)]
    if not np.isin(finite, (0.0, 1.0)).all():
        raise InputError(name, "values must be 0, 1 or NaN")
    return values


def _ratio(num: int, den: int) -> float:
    return float(num) / den if den else float("nan")


def screening_confusion(abnormal_true: np.ndarray, abnormal_pred: np.ndarray) -> dict[str, float]:
    """Normal-vs-abnormal confusion counts and rates (rows with NaN truth are left out).

    Args:
        abnormal_true: ``[N]`` 1 abnormal, 0 normal, NaN unknown.
        abnormal_pred: ``[N]`` 1 the AI calls it abnormal, 0 normal.

    Returns:
        ``n``, ``ai_normal_ref_normal`` (true negatives), ``ai_normal_ref_abnormal``
        (missed abnormal), ``ai_abnormal_ref_normal``, ``ai_abnormal_ref_abnormal``,
        ``sensitivity``, ``specificity``, ``ppv``, ``npv`` and ``normal_called_normal_rate``
        (= specificity). Rates are NaN when their denominator is 0.
    """
    truth = _binary(abnormal_true, "abnormal_true")
    pred = _binary(abnormal_pred, "abnormal_pred")
    if truth.shape != pred.shape:
        raise InputError("abnormal_pred", f"{pred.shape} predictions for {truth.shape} labels")
    keep = ~np.isnan(truth) & ~np.isnan(pred)
    t, p = truth[keep] == 1, pred[keep] == 1
    tp, fn = int((t & p).sum()), int((t & ~p).sum())
    tn, fp = int((~t & ~p).sum()), int((~t & p).sum())
    return {"n": int(keep.sum()), "ai_normal_ref_normal": tn, "ai_normal_ref_abnormal": fn,
            "ai_abnormal_ref_normal": fp, "ai_abnormal_ref_abnormal": tp,
            "sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp),
            "ppv": _ratio(tp, tp + fp), "npv": _ratio(tn, tn + fn)}


def risk_group_counts(abnormal_pred: np.ndarray, model_classes: np.ndarray,
                      disease_truth: np.ndarray, diseases: Sequence[str],
                      groups: Mapping[str, Sequence[str]], num_classes: int = 3) -> pd.DataFrame:
    """Counts of AI normal / target / others per risk group (seed 003 Tables 3 and 8).

    An image counts once in every group holding one of its (reference) diseases. Within
    a group it is *normal* when the ensemble called the image normal; otherwise *target*
    when the model of one of its diseases in that group predicts its target class, and
    *others* when only other models flagged it. With 2-class models there is no
    *others* row: an image called abnormal counts as *target* (Table 8's layout).

    Args:
        abnormal_pred: ``[N]`` ensemble decision, 1 = abnormal.
        model_classes: ``int [N, D]`` each per-disease model's predicted class (argmax):
            0 normal, 1 target, 2 others (2-class: 0 not target, 1 target).
        disease_truth: ``[N, D]`` reference labels of the same diseases (1 positive;
            0 / NaN otherwise).
        diseases: The ``D`` disease names (columns).
        groups: Risk group -> its diseases (names not in ``diseases`` are ignored).
        num_classes: 3 or 2.

    Returns:
        DataFrame indexed by ``normal``, ``target`` (and ``others``), one column per group.
    """
    pred = _binary(abnormal_pred, "abnormal_pred") == 1
    classes = np.asarray(model_classes)
    truth = np.nan_to_num(np.asarray(disease_truth, dtype=np.float64), nan=0.0) == 1
    if classes.shape != truth.shape or classes.shape != (len(pred), len(diseases)):
        raise InputError("model_classes", f"shapes {classes.shape} and {truth.shape} must both "
                                          f"be ({len(pred)}, {len(diseases)})")
    rows = AI_ROWS if num_classes == 3 else AI_ROWS[:2]
    table = pd.DataFrame(0, index=list(rows), columns=list(groups), dtype=np.int64)
    index = {name: k for k, name in enumerate(diseases)}
    for group, members in groups.items():
        cols = [index[m] for m in members if m in index]
        if not cols:
            continue
        has = truth[:, cols].any(axis=1)
        found = ((classes[:, cols] == 1) & truth[:, cols]).any(axis=1)
        table.loc["normal", group] = int((has & ~pred).sum())
        if num_classes == 3:
            table.loc["target", group] = int((has & pred & found).sum())
            table.loc["others", group] = int((has & pred & ~found).sum())
        else:
            table.loc["target", group] = int((has & pred).sum())
    return table


def unseen_distribution(model_classes: np.ndarray, unseen_truth: np.ndarray,
                        diseases: Sequence[str], unseen: Sequence[str],
                        num_classes: int = 3) -> pd.DataFrame:
    """Share of each unseen disease's images that each model calls each class (Table 9).

    Args:
        model_classes: ``int [N, D]`` predicted class of each per-disease model.
        unseen_truth: ``[N, U]`` reference labels of the unseen diseases (1 positive).
        diseases: The ``D`` model (disease) names.
        unseen: The ``U`` unseen disease names.
        num_classes: 3 or 2 (class names from :data:`CLASS_LABELS`).

    Returns:
        DataFrame with one row per unseen disease (``n`` = its image count) and columns
        ``<model>/<class>``; each model's shares sum to 1 (NaN without images).
    """
    classes = np.asarray(model_classes)
    truth = np.nan_to_num(np.asarray(unseen_truth, dtype=np.float64), nan=0.0) == 1
    if classes.ndim != 2 or classes.shape[1] != len(diseases) or truth.shape != (
            classes.shape[0], len(unseen)):
        raise InputError("model_classes", f"shapes {classes.shape} / {truth.shape} do not fit "
                                          f"{len(diseases)} models and {len(unseen)} diseases")
    names = CLASS_LABELS[num_classes]
    records = []
    for u, name in enumerate(unseen):
        rows = truth[:, u]
        record: dict[str, float | int | str] = {"unseen_disease": name, "n": int(rows.sum())}
        for d, model in enumerate(diseases):
            for k, label in enumerate(names):
                record[f"{model}/{label}"] = (float(np.mean(classes[rows, d] == k))
                                              if rows.any() else float("nan"))
        records.append(record)
    return pd.DataFrame.from_records(records).set_index("unseen_disease")


def predicted_normal_rate(abnormal_pred: np.ndarray, rows: np.ndarray | None = None) -> float:
    """Share of the selected images (boolean ``rows``; default all) the AI called normal."""
    pred = _binary(abnormal_pred, "abnormal_pred")
    if rows is not None:
        pred = pred[np.asarray(rows, dtype=bool)]
    pred = pred[~np.isnan(pred)]
    return float(np.mean(pred == 0)) if pred.size else float("nan")
