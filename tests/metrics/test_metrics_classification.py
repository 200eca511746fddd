"""Classification metrics against scikit-learn, hand-made examples and edge cases."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from cxrlab.errors import InputError, LabelValueError
from cxrlab.metrics import (
    auroc,
    average_precision,
    bootstrap_ci,
    delong_ci,
    multilabel_auroc,
    per_class_report,
    pr_curve,
    roc_curve,
    study_level,
    threshold_at_sensitivity,
    threshold_metrics,
    youden_threshold,
)
from cxrlab.metrics.calibration import expected_calibration_error

SEEDS = [0, 1, 2, 3]


def _random_problem(seed: int, n: int = 400, ties: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rng.uniform(0.1, 0.6)).astype(int)
    s = rng.random(n) + 0.4 * y
    if ties:
        s = np.round(s, 1)  # many tied scores, across both classes
    return y, s


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [True, False])
def test_auroc_matches_sklearn(seed: int, ties: bool) -> None:
    y, s = _random_problem(seed, ties=ties)
    assert auroc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [True, False])
@pytest.mark.parametrize("drop", [True, False])
def test_roc_curve_matches_sklearn(seed: int, ties: bool, drop: bool) -> None:
    y, s = _random_problem(seed, ties=ties)
    ours = roc_curve(y, s, drop_intermediate=drop)
    ref = skm.roc_curve(y, s, drop_intermediate=drop)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [True, False])
@pytest.mark.parametrize("drop", [True, False])
def test_pr_curve_and_average_precision_match_sklearn(seed: int, ties: bool, drop: bool) -> None:
    y, s = _random_problem(seed, ties=ties)
    ours = pr_curve(y, s, drop_intermediate=drop)
    ref = skm.precision_recall_curve(y, s, drop_intermediate=drop)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    assert average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)


def test_nan_labels_are_dropped() -> None:
    y, s = _random_problem(5)
    y = y.astype(float)
    y[::7] = np.nan
    s_with_nan = s.copy()
    s_with_nan[::7] = np.nan  # scores of unknown-label rows are never looked at
    kept = ~np.isnan(y)
    assert auroc(y, s_with_nan) == pytest.approx(skm.roc_auc_score(y[kept], s[kept]))
    assert threshold_metrics(y, s, 0.7)["tp"] == int(((s[kept] >= 0.7) & (y[kept] == 1)).sum())


def test_one_class_gives_nan_with_warning() -> None:
    with pytest.warns(UserWarning, match="undefined"):
        assert np.isnan(auroc([1, 1, 1], [0.2, 0.5, 0.9]))
    with pytest.warns(UserWarning, match="undefined"):
        assert np.isnan(auroc([0, np.nan, 0], [0.2, 0.5, 0.9]))
    with pytest.warns(UserWarning):
        assert np.isnan(youden_threshold([0, 0], [0.1, 0.2]))
    with pytest.warns(UserWarning):
        assert np.isnan(average_precision([0, 0], [0.1, 0.2]))
    with pytest.warns(UserWarning):
        assert np.isnan(threshold_at_sensitivity([0, 0], [0.1, 0.2], 0.9))
    with pytest.warns(UserWarning, match="'Edema'"):
        aucs = multilabel_auroc([[1, 0], [0, 0], [1, 0]], [[0.9, 0.1], [0.2, 0.3], [0.8, 0.4]], ["A", "Edema"])
    assert aucs[0] == 1.0 and np.isnan(aucs[1])


def test_bad_inputs_raise_specific_errors() -> None:
    with pytest.raises(LabelValueError, match="-1"):
        auroc([0, 1, -1], [0.1, 0.2, 0.3])
    with pytest.raises(InputError, match="NaN/inf"):
        auroc([0, 1, 1], [0.1, np.nan, 0.3])
    with pytest.raises(InputError, match="3 values"):
        auroc([0, 1, 1], [0.1, 0.3])
    with pytest.raises(InputError, match="target"):
        threshold_at_sensitivity([0, 1], [0.1, 0.2], 0.0)


def test_threshold_metrics_hand_made_example() -> None:
    y = [1, 1, 1, 0, 0, 0, 0, 1]
    s = [0.9, 0.8, 0.3, 0.6, 0.2, 0.1, 0.5, 0.7]
    # predicted positive (score >= 0.5): 0.9 0.8 0.6 0.5 0.7 -> tp 3, fp 2, fn 1, tn 2
    out = threshold_metrics(y, s, 0.5)
    assert (out["tp"], out["fp"], out["tn"], out["fn"]) == (3, 2, 2, 1)
    assert out["sensitivity"] == pytest.approx(3 / 4)
    assert out["specificity"] == pytest.approx(2 / 4)
    assert out["ppv"] == pytest.approx(3 / 5)
    assert out["npv"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    none_predicted = threshold_metrics(y, s, 2.0)
    assert np.isnan(none_predicted["ppv"]) and none_predicted["tp"] == 0 and none_predicted["fn"] == 4


@pytest.mark.parametrize("seed", SEEDS)
def test_threshold_metrics_match_sklearn(seed: int) -> None:
    y, s = _random_problem(seed)
    for threshold in (0.3, 0.7, 1.0):
        out = threshold_metrics(y, s, threshold)
        pred = (s >= threshold).astype(int)
        tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
        assert (out["tp"], out["fp"], out["tn"], out["fn"]) == (tp, fp, tn, fn)
        assert out["sensitivity"] == pytest.approx(skm.recall_score(y, pred))
        assert out["specificity"] == pytest.approx(skm.recall_score(1 - y, 1 - pred))
        assert out["ppv"] == pytest.approx(skm.precision_score(y, pred, zero_division=np.nan), nan_ok=True)
        assert out["npv"] == pytest.approx(
            skm.precision_score(1 - y, 1 - pred, zero_division=np.nan), nan_ok=True
        )
        assert out["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=np.nan), nan_ok=True)


def test_youden_threshold_hand_made_tie_prefers_highest() -> None:
    # J: 0.8 -> 0.5, 0.4 -> 0.0, 0.35 -> 0.5, 0.1 -> 0.0; tie resolved to the highest
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.8


@pytest.mark.parametrize("seed", SEEDS)
def test_youden_threshold_maximizes_j_by_brute_force(seed: int) -> None:
    y, s = _random_problem(seed)
    j = {t: skm.recall_score(y, s >= t) + skm.recall_score(1 - y, s < t) - 1 for t in np.unique(s)}
    best = max(j.values())
    expected = max(t for t, v in j.items() if np.isclose(v, best, atol=1e-12))
    assert youden_threshold(y, s) == expected


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 1.0])
def test_threshold_at_sensitivity_is_highest_reaching_target(seed: int, target: float) -> None:
    y, s = _random_problem(seed)
    t = threshold_at_sensitivity(y, s, target)
    assert threshold_metrics(y, s, t)["sensitivity"] >= target
    assert threshold_metrics(y, s, np.nextafter(t, np.inf))["sensitivity"] < target


@pytest.mark.parametrize("stratified", [True, False])
def test_bootstrap_vectorized_auroc_equals_per_replicate_loop(stratified: bool) -> None:
    y, s = _random_problem(0, n=300)
    fast = bootstrap_ci(y, s, n_boot=200, seed=7, stratified=stratified)
    slow = bootstrap_ci(y, s, metric=lambda a, b: auroc(a, b), n_boot=200, seed=7, stratified=stratified)
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)


def test_bootstrap_contains_estimate_and_shrinks_with_n() -> None:
    y_small, s_small = _random_problem(1, n=200, ties=False)
    y_big, s_big = _random_problem(1, n=5000, ties=False)
    est, low, high = bootstrap_ci(y_small, s_small, n_boot=500)
    assert est == pytest.approx(auroc(y_small, s_small))
    assert low < est < high
    est_big, low_big, high_big = bootstrap_ci(y_big, s_big, n_boot=500)
    assert low_big < est_big < high_big
    assert (high_big - low_big) < 0.5 * (high - low)
    # same seed -> same interval; another seed -> another one
    assert bootstrap_ci(y_small, s_small, n_boot=500) == (est, low, high)
    assert bootstrap_ci(y_small, s_small, n_boot=500, seed=1) != (est, low, high)


def test_bootstrap_generic_metric_and_close_to_delong() -> None:
    y, s = _random_problem(2, n=1500, ties=False)
    est, low, high = bootstrap_ci(y, s, metric=average_precision, n_boot=200)
    assert est == pytest.approx(skm.average_precision_score(y, s))
    assert low < est < high
    _, d_low, d_high = delong_ci(y, s)
    _, b_low, b_high = bootstrap_ci(y, s, n_boot=1000)
    assert b_high - b_low == pytest.approx(d_high - d_low, rel=0.2)


def _multilabel() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    n = 300
    y = (rng.random((n, 3)) < 0.35).astype(float)
    y[:, 2] = 0.0  # a class with no positive
    y[rng.random((n, 3)) < 0.2] = np.nan
    s = np.clip(0.3 * y + 0.7 * rng.random((n, 3)), 0, 1)
    s[np.isnan(s)] = rng.random(int(np.isnan(s).sum()))
    return y, s


def test_per_class_report_matches_single_class_functions() -> None:
    y, s = _multilabel()
    names = ["Atelectasis", "Edema", "Fracture"]
    with pytest.warns(UserWarning, match="'Fracture'"):
        report = per_class_report(y, s, names, sensitivity_target=0.9)
    assert list(report) == names
    for c, name in enumerate(names[:2]):
        kept = ~np.isnan(y[:, c])
        yc, sc = y[kept, c], s[kept, c]
        entry = report[name]
        assert entry["n"] == kept.sum() and entry["n_positive"] == yc.sum()
        assert entry["auroc"] == pytest.approx(skm.roc_auc_score(yc, sc))
        assert (entry["auroc"], entry["auroc_ci_low"], entry["auroc_ci_high"]) == pytest.approx(delong_ci(yc, sc))
        assert entry["average_precision"] == pytest.approx(skm.average_precision_score(yc, sc))
        assert entry["ece"] == pytest.approx(expected_calibration_error(yc, sc))
        assert entry["at_0.5"]["tp"] == int(((sc >= 0.5) & (yc == 1)).sum())
        assert entry["at_youden"]["threshold"] == youden_threshold(yc, sc)
        assert entry["at_sensitivity"]["sensitivity"] >= 0.9
        assert entry["at_sensitivity"]["threshold"] == threshold_at_sensitivity(yc, sc, 0.9)
    fracture = report["Fracture"]
    assert fracture["n_positive"] == 0 and np.isnan(fracture["auroc"]) and np.isnan(fracture["auroc_ci_low"])
    assert np.isnan(fracture["at_youden"]["threshold"]) and np.isnan(fracture["at_youden"]["sensitivity"])
    assert fracture["at_0.5"]["fp"] == int((s[~np.isnan(y[:, 2]), 2] >= 0.5).sum())


def test_study_level_by_hand() -> None:
    ids = ["s2", "s1", "s2", "s3", "s1", "s3"]
    y = np.array([[1, np.nan], [0, 0], [0, np.nan], [np.nan, np.nan], [np.nan, 1], [0, np.nan]])
    s = np.array([[0.2, 0.1], [0.3, 0.4], [0.6, 0.2], [0.1, 0.9], [0.5, 0.8], [0.7, 0.3]])
    uniq, ys, ss = study_level(ids, y, s)
    assert list(uniq) == ["s2", "s1", "s3"]  # order of first appearance
    np.testing.assert_array_equal(ys, [[1, np.nan], [0, 1], [0, np.nan]])
    np.testing.assert_array_equal(ss, [[0.6, 0.2], [0.5, 0.8], [0.7, 0.9]])
    uniq1, y1, s1 = study_level(ids, y[:, 0], s[:, 0])
    assert y1.shape == (3,) and s1[1] == 0.5
    with pytest.raises(InputError):
        study_level(ids[:-1], y, s)


def test_real_chexpert_labels_study_level(xrv_data) -> None:
    """CheXpert train labels: Age as a (weak) score for Pleural Effusion, image vs study level."""
    import pandas as pd

    table = pd.read_csv(xrv_data / "chexpert_train.csv.gz", usecols=["Path", "Age", "Pleural Effusion"])
    labels = table["Pleural Effusion"].replace(-1.0, np.nan).to_numpy()
    age = table["Age"].to_numpy(dtype=float)
    study = table["Path"].str.rsplit("/", n=1).str[0].to_numpy()  # .../patientP/studyS
    kept = ~np.isnan(labels)
    assert kept.sum() == 86187 + 35396
    assert auroc(labels, age) == pytest.approx(skm.roc_auc_score(labels[kept], age[kept]), abs=1e-12)
    uniq, study_labels, study_age = study_level(study, labels, age)
    assert len(uniq) == len(set(study)) == 187641
    grouped = pd.DataFrame({"s": study, "y": labels}).groupby("s", sort=False)["y"].max()
    np.testing.assert_array_equal(study_labels, grouped.loc[uniq].to_numpy())
    assert (~np.isnan(study_labels)).sum() == 100528 and np.nansum(study_labels) == 75696
    auc, low, high = delong_ci(study_labels, study_age)
    assert low < auc < high and 0.5 < auc < 0.7


def test_auroc_and_delong_are_fast_on_200k() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200_000)
    s = rng.random(200_000) + 0.1 * y
    auroc(y, s)  # warm-up (imports, caches)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auroc(y, s)
        delong_ci(y, s)
    assert time.perf_counter() - start < 1.0
