"""cxrlab.metrics: pure functions scoring predictions (numpy in, floats/arrays out).

Classification metrics are re-exported here; see :mod:`cxrlab.metrics.classification`.
"""

from __future__ import annotations

from cxrlab.metrics.classification import (
    auroc,
    average_precision,
    binary_summary,
    bootstrap_ci,
    delong_ci,
    delong_covariance,
    delong_paired_test,
    expected_calibration_error,
    multilabel_auroc,
    per_class_report,
    pr_curve,
    reliability_curve,
    roc_curve,
    study_level,
    threshold_at_sensitivity,
    threshold_metrics,
    youden_threshold,
)

__all__ = [
    "auroc",
    "average_precision",
    "binary_summary",
    "bootstrap_ci",
    "delong_ci",
    "delong_covariance",
    "delong_paired_test",
    "expected_calibration_error",
    "multilabel_auroc",
    "per_class_report",
    "pr_curve",
    "reliability_curve",
    "roc_curve",
    "study_level",
    "threshold_at_sensitivity",
    "threshold_metrics",
    "youden_threshold",
]
