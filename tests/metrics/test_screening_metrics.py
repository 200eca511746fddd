"""Screening tables from hand-made predictions equal hand counts."""

from __future__ import annotations

import numpy as np
import pytest

from cxrlab.data.screening import IGNORE, abnormal_truth, screening_targets
from cxrlab.errors import ConfigError, InputError
from cxrlab.metrics.screening import (predicted_normal_rate, risk_group_counts,
                                      screening_confusion, unseen_distribution)

NAN = np.nan


def test_confusion_counts_by_hand():
    truth = np.array([1, 1, 1, 1, 0, 0, 0, NAN, 1])
    pred = np.array([1, 1, 1, 0, 0, 1, 0, 1, 1])
    c = screening_confusion(truth, pred)
    # abnormal: rows 0,1,2,3,8 -> called abnormal 0,1,2,8 (4), missed 3 (1)
    # normal: rows 4,5,6 -> called normal 4,6 (2), called abnormal 5 (1); row 7 unknown
    assert (c["ai_abnormal_ref_abnormal"], c["ai_normal_ref_abnormal"]) == (4, 1)
    assert (c["ai_normal_ref_normal"], c["ai_abnormal_ref_normal"]) == (2, 1)
    assert c["n"] == 8
    assert c["sensitivity"] == pytest.approx(4 / 5)
    assert c["specificity"] == pytest.approx(2 / 3)
    assert c["ppv"] == pytest.approx(4 / 5) and c["npv"] == pytest.approx(2 / 3)


def test_confusion_without_normals_has_nan_specificity():
    c = screening_confusion(np.array([1, 1]), np.array([1, 0]))
    assert np.isnan(c["specificity"]) and c["sensitivity"] == 0.5
    with pytest.raises(InputError):
        screening_confusion(np.array([1, 2]), np.array([1, 0]))


def test_risk_group_counts_by_hand():
    diseases = ["Pneumothorax", "Effusion", "Nodule", "Cardiomegaly"]
    groups = {"critical": ["Pneumothorax", "Effusion"], "urgent": ["Nodule"],
              "cardiomegaly": ["Cardiomegaly"], "non-urgent": ["Support Device"]}
    truth = np.array([
        [1, 0, 0, 0],    # ptx, found by its model              -> critical target
        [1, 0, 0, 0],    # ptx, called normal                    -> critical normal
        [0, 1, 1, 0],    # effusion + nodule; nodule model finds -> critical others, urgent target
        [0, 0, 1, 0],    # nodule, abnormal via another model    -> urgent others
        [0, 0, 0, 1],    # cardiomegaly, found                   -> cardiomegaly target
        [0, 0, 0, 0],    # normal image: counted nowhere
    ], dtype=float)
    classes = np.array([
        [1, 0, 0, 0],
        [0, 0, 0, 0],
        [2, 2, 1, 2],
        [2, 2, 0, 2],
        [2, 2, 2, 1],
        [0, 0, 0, 0],
    ])
    pred = np.array([1, 0, 1, 1, 1, 0])
    table = risk_group_counts(pred, classes, truth, diseases, groups)
    assert table.loc["normal"].to_dict() == {"critical": 1, "urgent": 0, "cardiomegaly": 0,
                                             "non-urgent": 0}
    assert table.loc["target"].to_dict() == {"critical": 1, "urgent": 1, "cardiomegaly": 1,
                                             "non-urgent": 0}
    assert table.loc["others"].to_dict() == {"critical": 1, "urgent": 1, "cardiomegaly": 0,
                                             "non-urgent": 0}
    two = risk_group_counts(pred, np.minimum(classes, 1), truth, diseases, groups, num_classes=2)
    assert list(two.index) == ["normal", "target"]
    assert two.loc["target", "critical"] == 2 and two.loc["normal", "critical"] == 1


def test_unseen_distribution_by_hand():
    classes = np.array([[2, 0], [2, 1], [0, 2], [2, 2], [1, 1]])
    unseen = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 0]], dtype=float)
    table = unseen_distribution(classes, unseen, ["A", "B"], ["edema", "fracture"])
    assert table.loc["edema", "n"] == 3 and table.loc["fracture", "n"] == 1
    assert table.loc["edema", "A/others"] == pytest.approx(2 / 3)
    assert table.loc["edema", "A/normal"] == pytest.approx(1 / 3)
    assert table.loc["edema", "B/normal"] == pytest.approx(1 / 3)
    assert table.loc["edema", "B/target"] == pytest.approx(1 / 3)
    assert table.loc["fracture", "B/others"] == 1.0
    for model in "AB":
        row = table.loc["edema", [f"{model}/{c}" for c in ("normal", "target", "others")]]
        assert row.sum() == pytest.approx(1.0)


def test_predicted_normal_rate():
    pred = np.array([0, 1, 1, 0, 1])
    assert predicted_normal_rate(pred) == pytest.approx(0.4)
    assert predicted_normal_rate(pred, np.array([1, 1, 0, 0, 0], bool)) == 0.5
    assert np.isnan(predicted_normal_rate(np.zeros(0)))


def test_targets_from_multilabel_rows():
    pathologies = ["A", "B", "Other"]
    labels = np.array([[1, 0, 0], [0, 0, 0], [0, 1, 0], [0, 0, 1], [NAN, 0, 0], [0, NAN, 0],
                       [1, 1, 0]], dtype=np.float32)
    three = screening_targets(labels, pathologies, ["A", "B"])
    assert three[:, 0].tolist() == [1, 0, 2, 2, IGNORE, IGNORE, 1]
    assert three[:, 1].tolist() == [2, 0, 1, 2, IGNORE, IGNORE, 1]
    two = screening_targets(labels, pathologies, ["A", "B"], num_classes=2)
    assert two[:, 0].tolist() == [1, 0, 0, 0, IGNORE, 0, 1]
    assert abnormal_truth(labels)[:6].tolist()[:4] == [1, 0, 1, 1]
    assert np.isnan(abnormal_truth(labels)[4])
    with pytest.raises(ConfigError):
        screening_targets(labels, pathologies, ["Z"])
