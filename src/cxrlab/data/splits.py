"""Patient-level splits: no patient's images ever land in two parts.

Both functions return indices into the dataset (the positions of ``patient_ids``), are
deterministic for a given ``seed`` and use their own random generator (no global
seeding).

Example:
    >>> parts = patient_split(["a", "a", "b", "c"], {"train": 0.5, "test": 0.5}, seed=0)
    >>> sorted(np.concatenate(list(parts.values())).tolist())
    [0, 1, 2, 3]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedGroupKFold

from cxrlab.errors import ConfigError

DEFAULT_FRACTIONS = {"train": 0.8, "valid": 0.1, "test": 0.1}


def _patient_codes(patient_ids: Sequence | np.ndarray) -> tuple[np.ndarray, int]:
    codes, uniques = pd.factorize(pd.Series(np.asarray(patient_ids, dtype=object)), sort=True)
    if (codes < 0).any():
        raise ConfigError(None, "patient ids must not be missing (None/NaN)")
    return codes, len(uniques)


def patient_split(
    patient_ids: Sequence | np.ndarray,
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Split images into named parts by patient.

    The unique patients are shuffled with ``seed`` and cut into consecutive blocks whose
    sizes are the fractions of the *number of patients* (largest-remainder rounding, so
    the block sizes add up exactly); every image follows its patient.

    Args:
        patient_ids: One patient id per image.
        fractions: Part name -> fraction of patients; fractions are positive and sum to 1.
            Default ``{"train": .8, "valid": .1, "test": .1}``.
        seed: Seed of the shuffle.

    Returns:
        Part name -> sorted ``int64`` image indices, in the order of ``fractions``.

    Raises:
        ConfigError: Fractions are not positive or do not sum to 1, or there are fewer
            patients than parts.
    """
    fractions = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    if not fractions or any(not f > 0 for f in fractions.values()):
        raise ConfigError(None, f"split fractions must be positive, got {fractions}")
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ConfigError(None, f"split fractions must sum to 1, got {fractions} "
                                f"(sum {sum(fractions.values()):.4f})")
    codes, n_patients = _patient_codes(patient_ids)
    if n_patients < len(fractions):
        raise ConfigError(None, f"{n_patients} patient(s) cannot fill {len(fractions)} "
                                f"split parts {list(fractions)}")
    exact = np.array(list(fractions.values())) * n_patients
    sizes = np.floor(exact).astype(int)
    sizes = np.maximum(sizes, 1)
    while sizes.sum() > n_patients:  # only possible after lifting empty parts to 1
        sizes[np.argmax(sizes)] -= 1
    remainders = exact - np.floor(exact)
    for part in np.argsort(-remainders, kind="stable")[: n_patients - sizes.sum()]:
        sizes[part] += 1
    order = np.random.default_rng(seed).permutation(n_patients)
    part_of_patient = np.empty(n_patients, dtype=int)
    part_of_patient[order] = np.repeat(np.arange(len(sizes)), sizes)
    image_parts = part_of_patient[codes]
    return {name: np.flatnonzero(image_parts == k) for k, name in enumerate(fractions)}


def patient_kfold(
    patient_ids: Sequence | np.ndarray,
    n_splits: int = 5,
    seed: int = 0,
    stratify: Sequence | np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """K-fold cross-validation by patient, optionally stratified.

    Without ``stratify`` the unique patients are shuffled and cut into ``n_splits``
    folds (scikit-learn ``KFold`` over patients). With ``stratify`` (one class key per
    image, e.g. the pneumothorax label), scikit-learn's ``StratifiedGroupKFold`` keeps
    the class proportions of the folds close to the whole while keeping patients whole.

    Args:
        patient_ids: One patient id per image.
        n_splits: Number of folds (>= 2).
        seed: Seed of the shuffle.
        stratify: Optional class key per image (any values; NaN is a class of its own).

    Returns:
        ``n_splits`` pairs ``(train_indices, val_indices)`` of sorted ``int64`` indices;
        each image is in exactly one validation fold.

    Raises:
        ConfigError: ``n_splits`` < 2 or more than the number of patients, or
            ``stratify`` has another length.
    """
    codes, n_patients = _patient_codes(patient_ids)
    if n_splits < 2 or n_splits > n_patients:
        raise ConfigError(None, f"n_splits must be between 2 and the number of patients "
                                f"({n_patients}), got {n_splits}")
    index = np.arange(len(codes))
    if stratify is None:
        folds = KFold(n_splits=n_splits, shuffle=True, random_state=seed)
        result = []
        for train_p, val_p in folds.split(np.arange(n_patients)):
            in_val = np.isin(codes, val_p)
            result.append((index[~in_val], index[in_val]))
        return result
    keys = pd.Series(np.asarray(stratify, dtype=object)).astype(str).to_numpy()
    if len(keys) != len(codes):
        raise ConfigError(None, f"stratify has {len(keys)} values for {len(codes)} images")
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [(np.sort(tr), np.sort(va)) for tr, va in folds.split(index, keys, groups=codes)]
