"""DeLong variance, interval and paired test against a direct O(n^2) computation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from cxrlab.errors import InputError
from cxrlab.metrics import delong_ci, delong_covariance, delong_paired_test

SEEDS = [0, 1, 2]


def _psi(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Kernel matrix psi(X_i, Y_j) = 1 if X_i > Y_j, 1/2 if equal, 0 otherwise ([m, n])."""
    return (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])


def _direct_components(y: np.ndarray, s: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    psi = _psi(s[y == 1], s[y == 0])
    return psi.mean(), psi.mean(axis=1), psi.mean(axis=0)  # auc, V10 per positive, V01 per negative


def _problem(seed: int, n: int = 300, ties: bool = True):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(int)
    a = rng.normal(size=n) + 1.0 * y
    b = 0.6 * a + 0.8 * rng.normal(size=n) + 0.3 * y  # correlated second scorer
    if ties:
        a, b = np.round(a, 1), np.round(b, 1)
    return y, a, b


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [True, False])
def test_variance_and_ci_match_direct_computation(seed: int, ties: bool) -> None:
    y, a, _ = _problem(seed, ties=ties)
    m, n = int(y.sum()), int((1 - y).sum())
    auc, v10, v01 = _direct_components(y, a)
    var = v10.var(ddof=1) / m + v01.var(ddof=1) / n
    aucs, cov = delong_covariance(y, a)
    assert aucs[0] == pytest.approx(auc, abs=1e-12)
    assert aucs[0] == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert cov[0, 0] == pytest.approx(var, rel=1e-10)
    est, low, high = delong_ci(y, a, alpha=0.95)
    z = norm.ppf(0.975)
    assert est == pytest.approx(auc, abs=1e-12)
    assert low == pytest.approx(max(0.0, auc - z * np.sqrt(var)), rel=1e-10)
    assert high == pytest.approx(min(1.0, auc + z * np.sqrt(var)), rel=1e-10)
    _, low90, high90 = delong_ci(y, a, alpha=0.90)
    assert low < low90 < est < high90 < high


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [True, False])
def test_paired_test_matches_direct_covariance(seed: int, ties: bool) -> None:
    y, a, b = _problem(seed, ties=ties)
    m, n = int(y.sum()), int((1 - y).sum())
    auc_a, v10_a, v01_a = _direct_components(y, a)
    auc_b, v10_b, v01_b = _direct_components(y, b)
    cov = np.cov(np.vstack([v10_a, v10_b])) / m + np.cov(np.vstack([v01_a, v01_b])) / n
    aucs, ours = delong_covariance(y, [a, b])
    np.testing.assert_allclose(aucs, [auc_a, auc_b], atol=1e-12)
    np.testing.assert_allclose(ours, cov, rtol=1e-10)
    z_direct = (auc_a - auc_b) / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    got_a, got_b, z, p = delong_paired_test(y, a, b)
    assert (got_a, got_b) == pytest.approx((auc_a, auc_b), abs=1e-12)
    assert z == pytest.approx(z_direct, rel=1e-9)
    assert p == pytest.approx(2 * norm.sf(abs(z_direct)), rel=1e-9)
    assert 0.0 < p <= 1.0
    # swapping the scorers flips z, keeps p
    _, _, z_swapped, p_swapped = delong_paired_test(y, b, a)
    assert z_swapped == pytest.approx(-z) and p_swapped == pytest.approx(p)


def test_paired_test_identical_and_clearly_different_scores() -> None:
    y, a, _ = _problem(4, n=400)
    auc_a, auc_b, z, p = delong_paired_test(y, a, a.copy())
    assert auc_a == auc_b and z == 0.0 and p == 1.0
    # a monotone transform keeps the ranks, hence the AUC: also no difference
    assert delong_paired_test(y, a, np.exp(a))[3] == 1.0
    rng = np.random.default_rng(4)
    noise = rng.normal(size=y.size)
    _, _, z, p = delong_paired_test(y, a, noise)
    assert z > 5 and p < 1e-6


def test_perfect_separation_gives_degenerate_interval() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    assert delong_ci(y, s) == (1.0, 1.0, 1.0)
    # zero variance of the difference but different AUCs: z is infinite, p is 0
    auc_a, auc_b, z, p = delong_paired_test(y, s, -s)
    assert (auc_a, auc_b, z, p) == (1.0, 0.0, np.inf, 0.0)


def test_undefined_cases_warn_and_return_nan() -> None:
    with pytest.warns(UserWarning, match="undefined"):
        auc, low, high = delong_ci([1, 1, 1], [0.1, 0.2, 0.3])
    assert np.isnan(auc) and np.isnan(low) and np.isnan(high)
    with pytest.warns(UserWarning, match="at least 2"):
        auc, low, high = delong_ci([1, 0, 0, np.nan], [0.9, 0.2, 0.3, 0.5])
    assert auc == 1.0 and np.isnan(low) and np.isnan(high)
    with pytest.warns(UserWarning):
        result = delong_paired_test([0, 0], [0.1, 0.2], [0.2, 0.1])
    assert all(np.isnan(v) for v in result)
    with pytest.raises(InputError, match="alpha"):
        delong_ci([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], alpha=95)
    with pytest.raises(InputError, match="scores\\[1\\]"):
        delong_paired_test([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2])
