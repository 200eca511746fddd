"""Reliability curve against scikit-learn; ECE on calibrated and miscalibrated toys."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve

from cxrlab.errors import InputError
from cxrlab.metrics import expected_calibration_error, reliability_curve


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize("n_bins", [5, 10])
def test_reliability_curve_matches_sklearn(seed: int, strategy: str, n_bins: int) -> None:
    rng = np.random.default_rng(seed)
    p = rng.beta(2, 3, size=500)
    p[:20] = np.round(p[:20], 1)  # some probabilities exactly on bin edges
    y = (rng.random(500) < p).astype(int)
    frac, mean, counts = reliability_curve(y, p, n_bins=n_bins, strategy=strategy)
    ref_frac, ref_mean = calibration_curve(y, p, n_bins=n_bins, strategy=strategy)
    np.testing.assert_allclose(frac, ref_frac, atol=1e-12)
    np.testing.assert_allclose(mean, ref_mean, atol=1e-12)
    assert counts.sum() == 500 and (counts > 0).all()


def test_ece_perfect_toy_is_zero_and_miscalibrated_toy_by_hand() -> None:
    # 20 cases at each probability, with exactly that fraction of positives
    probs = np.repeat([0.15, 0.55, 0.85], 20)
    labels = np.concatenate([np.arange(20) < k for k in (3, 11, 17)]).astype(int)
    assert expected_calibration_error(labels, probs) == pytest.approx(0.0, abs=1e-12)
    # same labels, every probability 0.95: bins 0.15/0.55/0.85 become one bin at 0.95
    overconfident = np.full(60, 0.95)
    assert expected_calibration_error(labels, overconfident) == pytest.approx(0.95 - 31 / 60)
    # one bin at 0.35 holding all cases: the gap is |31/60 - 0.35|
    shifted = np.repeat([0.35, 0.35, 0.35], 20)
    assert expected_calibration_error(labels, shifted) == pytest.approx(abs(31 / 60 - 0.35))
    # three equal-size bins, each off by 0.1
    off_by_tenth = np.repeat([0.05, 0.45, 0.95], 20)
    expected = (abs(0.15 - 0.05) + abs(0.55 - 0.45) + abs(0.85 - 0.95)) / 3
    assert expected_calibration_error(labels, off_by_tenth) == pytest.approx(expected)


def test_ece_large_sample_calibrated_vs_miscalibrated() -> None:
    rng = np.random.default_rng(3)
    p = rng.random(20_000)
    y = (rng.random(20_000) < p).astype(int)
    calibrated = expected_calibration_error(y, p)
    miscalibrated = expected_calibration_error(y, p**3)
    assert calibrated < 0.02
    assert miscalibrated > 0.15


def test_calibration_input_checks() -> None:
    with pytest.raises(InputError, match="sigmoid"):
        expected_calibration_error([0, 1], [-2.0, 3.0])
    with pytest.raises(InputError, match="n_bins"):
        reliability_curve([0, 1], [0.2, 0.8], n_bins=0)
    with pytest.raises(InputError, match="strategy"):
        reliability_curve([0, 1], [0.2, 0.8], strategy="kmeans")
    assert np.isnan(expected_calibration_error([np.nan], [0.3]))
    # NaN labels are dropped, not counted as negatives
    assert expected_calibration_error([1, np.nan], [1.0, 0.9]) == 0.0
