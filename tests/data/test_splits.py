"""Patient-level splits and K-fold on the real NIH patients."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrlab.data.splits import patient_kfold, patient_split
from cxrlab.errors import ConfigError


@pytest.fixture(scope="module")
def nih_entries(xrv_data) -> pd.DataFrame:
    return pd.read_csv(xrv_data / "Data_Entry_2017_v2020.csv.gz",
                       usecols=["Patient ID", "Finding Labels"])


def test_patient_split_on_nih_keeps_patients_whole(nih_entries):
    patients = nih_entries["Patient ID"].to_numpy()
    parts = patient_split(patients, seed=3)
    assert list(parts) == ["train", "valid", "test"]
    everything = np.concatenate(list(parts.values()))
    assert len(everything) == len(patients) == 112120
    assert len(np.unique(everything)) == len(patients)  # each image exactly once
    owners = {name: set(patients[idx]) for name, idx in parts.items()}
    assert not owners["train"] & owners["valid"]
    assert not owners["train"] & owners["test"]
    assert not owners["valid"] & owners["test"]
    n_patients = nih_entries["Patient ID"].nunique()
    assert n_patients == 30805
    assert abs(len(owners["train"]) - 0.8 * n_patients) <= 1
    assert abs(len(owners["test"]) - 0.1 * n_patients) <= 1
    assert sum(len(v) for v in owners.values()) == n_patients


def test_patient_split_is_deterministic_per_seed(nih_entries):
    patients = nih_entries["Patient ID"].to_numpy()
    a, b = patient_split(patients, seed=1), patient_split(patients, seed=1)
    c = patient_split(patients, seed=2)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["test"], c["test"])


def test_patient_split_custom_fractions_and_errors():
    ids = ["p1", "p1", "p2", "p3", "p4"]
    parts = patient_split(ids, {"a": 0.5, "b": 0.5}, seed=0)
    assert sorted(np.concatenate(list(parts.values())).tolist()) == [0, 1, 2, 3, 4]
    assert set(parts) == {"a", "b"}
    assert {ids[i] for i in parts["a"]}.isdisjoint({ids[i] for i in parts["b"]})
    with pytest.raises(ConfigError, match="sum to 1"):
        patient_split(ids, {"a": 0.5, "b": 0.4})
    with pytest.raises(ConfigError, match="positive"):
        patient_split(ids, {"a": 1.2, "b": -0.2})
    with pytest.raises(ConfigError, match="cannot fill"):
        patient_split(["p1", "p1"], {"a": 0.5, "b": 0.5})


def test_patient_split_small_fraction_still_gets_a_patient():
    parts = patient_split([f"p{i}" for i in range(10)], {"train": 0.98, "test": 0.02}, seed=0)
    assert len(parts["test"]) == 1 and len(parts["train"]) == 9


def test_patient_kfold_on_nih_each_image_validated_once(nih_entries):
    patients = nih_entries["Patient ID"].to_numpy()
    folds = patient_kfold(patients, n_splits=5, seed=0)
    assert len(folds) == 5
    seen = np.zeros(len(patients), dtype=int)
    for train, val in folds:
        assert len(train) + len(val) == len(patients)
        assert not set(patients[train]) & set(patients[val])
        seen[val] += 1
    assert (seen == 1).all()
    again = patient_kfold(patients, n_splits=5, seed=0)
    assert all(np.array_equal(f[1], g[1]) for f, g in zip(folds, again))


def test_patient_kfold_stratified_balances_classes(nih_entries):
    rows = nih_entries.iloc[:6000]
    patients = rows["Patient ID"].to_numpy()
    effusion = rows["Finding Labels"].str.contains("Effusion").to_numpy()
    folds = patient_kfold(patients, n_splits=4, seed=0, stratify=effusion)
    overall = effusion.mean()
    for train, val in folds:
        assert not set(patients[train]) & set(patients[val])
        assert abs(effusion[val].mean() - overall) < 0.03


def test_patient_kfold_errors():
    with pytest.raises(ConfigError, match="n_splits"):
        patient_kfold(["a", "b"], n_splits=3)
    with pytest.raises(ConfigError, match="stratify"):
        patient_kfold(["a", "b", "c"], n_splits=2, stratify=[0, 1])
