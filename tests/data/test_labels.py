"""Label policies, CheXpert cell parsing, study aggregation and label counts."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pandas as pd
import pytest

from cxrlab.data.labels import (LabelPolicy, aggregate_by_study, apply_policy, count_labels,
                                parse_label_cells, parse_policies)
from cxrlab.errors import ConfigError, LabelValueError

NAN = np.nan
CLASSES = ["Edema", "Atelectasis", "Cardiomegaly", "Consolidation"]


def test_parse_policies_maps_classes_case_insensitively():
    policy = parse_policies(["edema=ones", "Atelectasis = ZEROS", "cardiomegaly=multiclass"],
                            classes=CLASSES)
    assert dict(policy.uncertain) == {"Edema": "ones", "Atelectasis": "zeros",
                                      "Cardiomegaly": "multiclass"}
    assert policy.for_class("Consolidation") == "ignore"
    assert policy.for_class("Edema") == "ones"


def test_parse_policies_star_sets_default():
    policy = parse_policies(["*=zeros", "Edema=ones"], classes=CLASSES)
    assert policy.default == "zeros"
    assert policy.for_class("Consolidation") == "zeros"
    assert policy.for_class("Edema") == "ones"


@pytest.mark.parametrize("spec, words", [
    ("Foo=ones", "unknown class 'Foo'"),
    ("Edema=maybe", "'maybe' is not one of"),
    ("Edema", "CLASS=POLICY"),
    ("=ones", "CLASS=POLICY"),
])
def test_parse_policies_rejects_bad_specs(spec, words):
    with pytest.raises(ConfigError, match=words):
        parse_policies([spec], classes=CLASSES)


def test_parse_policies_rejects_conflicting_duplicates():
    with pytest.raises(ConfigError, match="already has policy"):
        parse_policies(["Edema=ones", "edema=zeros"], classes=CLASSES)


def test_label_policy_validates_and_round_trips():
    with pytest.raises(ConfigError):
        LabelPolicy(default="sometimes")
    with pytest.raises(ConfigError):
        LabelPolicy(blank="positive")
    policy = LabelPolicy(uncertain={"Edema": "ones"}, default="zeros", blank="negative")
    assert LabelPolicy.from_dict(policy.to_dict()) == policy
    assert hash(LabelPolicy.from_dict(policy.to_dict())) == hash(policy)
    assert pickle.loads(pickle.dumps(policy)) == policy  # DataLoader workers, checkpoints
    assert policy != LabelPolicy(uncertain={"Edema": "zeros"}, default="zeros", blank="negative")


def test_apply_policy_each_rule():
    raw = np.array([[-1, -1, -1, -1], [1, 0, NAN, 1], [0, NAN, -1, 0]], dtype=np.float32)
    policy = parse_policies(["Edema=ones", "Atelectasis=zeros", "Cardiomegaly=multiclass"],
                            classes=CLASSES)
    out = apply_policy(raw, CLASSES, policy)
    expected = np.array([[1, 0, -1, NAN], [1, 0, NAN, 1], [0, NAN, -1, 0]], dtype=np.float32)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.float32
    assert np.isnan(raw[1, 2]) and raw[0, 0] == -1  # input untouched


def test_apply_policy_blank_negative():
    raw = np.array([[NAN, -1], [1, NAN]], dtype=np.float32)
    out = apply_policy(raw, ["A", "B"], LabelPolicy(default="ignore", blank="negative"))
    np.testing.assert_array_equal(out, np.array([[0, NAN], [1, 0]], dtype=np.float32))


def test_apply_policy_checks_shape():
    with pytest.raises(ConfigError, match="one column per class"):
        apply_policy(np.zeros((3, 2)), CLASSES, LabelPolicy())


def test_aggregate_by_study_takes_max_positive_uncertain_negative():
    ids = ["s2", "s1", "s2", "s3", "s1", "s4", "s4"]
    labels = np.array([
        [0, NAN], [1, -1], [1, 0], [NAN, NAN], [0, 0], [-1, 0], [0, NAN],
    ], dtype=np.float32)
    studies, out = aggregate_by_study(ids, labels)
    assert studies.tolist() == ["s2", "s1", "s3", "s4"]  # first appearance
    # s2: {0, 1} -> 1 and {NaN, 0} -> 0; s1: {1, 0} -> 1 and {-1, 0} -> -1 (uncertain
    # beats negative); s3: all NaN stays NaN; s4: {-1, 0} -> -1 and {0, NaN} -> 0.
    expected = np.array([[1, 0], [1, -1], [NAN, NAN], [-1, 0]], dtype=np.float32)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.float32


def test_aggregate_by_study_rejects_values_outside_vocabulary():
    with pytest.raises(LabelValueError, match="1, 0, -1 or NaN"):
        aggregate_by_study(["a", "a"], np.array([[0.5], [1.0]]))
    with pytest.raises(LabelValueError, match="study ids"):
        aggregate_by_study(["a"], np.zeros((2, 1)))
    with pytest.raises(LabelValueError, match="row 1 is missing"):
        aggregate_by_study(["a", None], np.zeros((2, 1)))


def test_aggregate_by_study_matches_pandas_and_is_fast():
    rng = np.random.default_rng(0)
    n = 200_000
    ids = rng.integers(0, 80_000, n).astype(str)
    labels = rng.choice(np.array([1, 0, -1, NAN], dtype=np.float32), size=(n, 14))
    start = time.perf_counter()
    studies, out = aggregate_by_study(ids, labels)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0
    # Independent check: rank values in a DataFrame and use groupby max.
    ranked = pd.DataFrame(labels).replace({-1.0: 0.5})
    ranked["id"] = ids
    expected = ranked.groupby("id", sort=False).max().replace({0.5: -1.0})
    np.testing.assert_array_equal(out, expected.loc[studies].to_numpy(dtype=np.float32))


def test_parse_label_cells_flags_everything_but_the_vocabulary():
    cells = pd.Series(["1.0", "0.0", "-1.0", "", "1", "-1", " 0 ", "2", "yes", "nan", "0.5"])
    values, bad = parse_label_cells(cells)
    np.testing.assert_array_equal(values[:7], [1, 0, -1, NAN, 1, -1, 0])
    assert bad.tolist() == [False] * 7 + [True] * 4
    assert np.isnan(values[7:]).all()


def test_count_labels_per_policy():
    labels = np.array([[1, -1], [0, -1], [NAN, 1], [1, 0]], dtype=np.float32)
    policy = parse_policies(["B=multiclass"], classes=["A", "B"])
    counts = count_labels(labels, ["A", "B"], policy)
    assert counts == {"A": {"n": 3, "positive": 2, "negative": 1},
                      "B": {"n": 4, "positive": 1, "negative": 1, "uncertain": 2}}
