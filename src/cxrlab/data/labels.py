"""Label vocabularies, uncertainty policies and study-level aggregation.

Raw labels follow CheXpert: ``1`` positive, ``0`` negative, ``-1`` uncertain and blank
(``NaN``) unmentioned. A :class:`LabelPolicy` says, per class, what an uncertain label
becomes (the U-Ones / U-Zeros / U-Ignore / U-MultiClass policies of the CheXpert paper)
and what a blank becomes. :func:`aggregate_by_study` reduces image labels to study labels
(maximum over the views of a study, positive > uncertain > negative, NaN ignored).

Example:
    >>> import numpy as np
    >>> policy = parse_policies(["Edema=ones"], classes=["Edema", "Atelectasis"])
    >>> apply_policy(np.array([[-1.0, -1.0]]), ["Edema", "Atelectasis"], policy)
    array([[ 1., nan]], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cxrlab.data.policies import BLANK_POLICIES, POLICIES
from cxrlab.errors import ConfigError, LabelValueError

#: Raw label values a CheXpert-style cell may hold, besides blank.
LABEL_VALUES = (1.0, 0.0, -1.0)


@dataclass(frozen=True)
class LabelPolicy:
    """How uncertain (``-1``) and blank labels become training targets, per class.

    Args:
        uncertain: Class name -> one of :data:`POLICIES`. Classes not named use
            ``default``.
        default: Policy of classes not named in ``uncertain`` (``"ignore"`` by default:
            uncertain labels become unknown).
        blank: ``"unknown"`` (blank stays NaN and is masked out of losses and metrics) or
            ``"negative"`` (blank becomes 0, the usual reading of an unmentioned finding).

    Raises:
        ConfigError: A policy name is not one of :data:`POLICIES` / :data:`BLANK_POLICIES`.
    """

    uncertain: Mapping[str, str] = field(default_factory=dict)
    default: str = "ignore"
    blank: str = "unknown"

    def __post_init__(self) -> None:
        for name, value in [("default", self.default), *self.uncertain.items()]:
            if value not in POLICIES:
                raise ConfigError(None, f"policy {value!r} for {name!r} is not one of "
                                        f"{', '.join(POLICIES)}")
        if self.blank not in BLANK_POLICIES:
            raise ConfigError(None, f"blank policy {self.blank!r} is not one of "
                                    f"{', '.join(BLANK_POLICIES)}")
        # A private copy, so that later changes to the caller's dict do not leak in.
        object.__setattr__(self, "uncertain", dict(self.uncertain))

    def __hash__(self) -> int:
        return hash((tuple(sorted(self.uncertain.items())), self.default, self.blank))

    def for_class(self, name: str) -> str:
        """The uncertainty policy of class ``name``."""
        return self.uncertain.get(name, self.default)

    def to_dict(self) -> dict:
        """Plain-dict form (for configs and checkpoints)."""
        return {"uncertain": dict(self.uncertain), "default": self.default, "blank": self.blank}

    @classmethod
    def from_dict(cls, data: Mapping) -> LabelPolicy:
        """Inverse of :meth:`to_dict`."""
        return cls(uncertain=dict(data.get("uncertain", {})),
                   default=data.get("default", "ignore"), blank=data.get("blank", "unknown"))


def parse_policies(
    specs: Iterable[str],
    default: str = "ignore",
    *,
    classes: Sequence[str] | None = None,
    blank: str = "unknown",
) -> LabelPolicy:
    """Build a :class:`LabelPolicy` from ``"CLASS=policy"`` strings.

    ``CLASS`` may be ``*`` to set the default for every class not named. When
    ``classes`` is given, names are matched case-insensitively and stored with the
    spelling of ``classes``.

    Args:
        specs: Strings such as ``"Atelectasis=ones"`` or ``"Cardiomegaly=multiclass"``.
        default: Policy of classes not named.
        classes: The dataset's class names; a spec naming another class is an error.
        blank: ``"unknown"`` or ``"negative"`` (see :class:`LabelPolicy`).

    Returns:
        The policy.

    Raises:
        ConfigError: A spec lacks ``=``, names an unknown class or policy, or names a
            class twice with different policies.
    """
    known = None if classes is None else {name.lower(): name for name in classes}
    mapping: dict[str, str] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        name, value = name.strip(), value.strip().lower()
        if not sep or not name or not value:
            raise ConfigError(None, f"policy {spec!r} is not of the form CLASS=POLICY "
                                    f"(POLICY one of {', '.join(POLICIES)})")
        if value not in POLICIES:
            raise ConfigError(None, f"policy {spec!r}: {value!r} is not one of "
                                    f"{', '.join(POLICIES)}")
        if name == "*":
            default = value
            continue
        if known is not None:
            if name.lower() not in known:
                raise ConfigError(None, f"policy {spec!r}: unknown class {name!r}; classes "
                                        f"are {', '.join(classes or [])}")
            name = known[name.lower()]
        if mapping.get(name, value) != value:
            raise ConfigError(None, f"policy {spec!r}: class {name!r} already has policy "
                                    f"{mapping[name]!r}")
        mapping[name] = value
    return LabelPolicy(uncertain=mapping, default=default, blank=blank)


def apply_policy(raw: np.ndarray, pathologies: Sequence[str], policy: LabelPolicy) -> np.ndarray:
    """Turn raw labels into targets under ``policy``.

    ``ones``: -1 -> 1; ``zeros``: -1 -> 0; ``ignore``: -1 -> NaN; ``multiclass``: -1 kept.
    Blank (NaN) stays NaN, or becomes 0 when ``policy.blank == "negative"``.

    Args:
        raw: ``[N, C]`` raw labels in {1, 0, -1, NaN}.
        pathologies: The ``C`` class names, in column order.
        policy: The policy.

    Returns:
        ``float32 [N, C]`` targets (a new array).

    Raises:
        ConfigError: ``raw`` does not have one column per class.
    """
    raw = np.asarray(raw, dtype=np.float32)
    if raw.ndim != 2 or raw.shape[1] != len(pathologies):
        raise ConfigError(None, f"labels of shape {raw.shape} do not have one column per "
                                f"class ({len(pathologies)} classes)")
    out = raw.copy()
    if policy.blank == "negative":
        out[np.isnan(out)] = 0.0
    replacement = {"ones": 1.0, "zeros": 0.0, "ignore": np.nan}
    for col, name in enumerate(pathologies):
        rule = policy.for_class(name)
        if rule != "multiclass":
            column = out[:, col]
            column[column == -1.0] = replacement[rule]
    return out


def aggregate_by_study(study_ids: Sequence | np.ndarray, labels: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Study labels: the maximum over a study's views, ignoring NaN.

    The order is positive (1) > uncertain (-1) > negative (0): a study is positive when
    any view is, uncertain when no view is positive and one is uncertain (so U-MultiClass
    keeps -1 unless a view is positive), negative otherwise, and NaN only when every view
    is NaN. Studies come out in order of first appearance.

    Args:
        study_ids: ``N`` study identifiers (any hashable values).
        labels: ``[N, C]`` labels in {1, 0, -1, NaN}.

    Returns:
        ``(unique_study_ids, study_labels)``: ``[S]`` ids and ``float32 [S, C]`` labels.

    Raises:
        LabelValueError: A label is outside {1, 0, -1, NaN}, or the lengths differ.
    """
    labels = np.asarray(labels, dtype=np.float32)
    if labels.ndim == 1:
        labels = labels[:, None]
    codes, uniques = pd.factorize(pd.Series(np.asarray(study_ids, dtype=object)), sort=False)
    if len(codes) != len(labels):
        raise LabelValueError(None, f"{len(codes)} study ids but {len(labels)} label rows")
    if (codes < 0).any():
        raise LabelValueError(None, f"study id of row {int(np.argmax(codes < 0))} is missing")
    finite = labels[~np.isnan(labels)]
    if not np.isin(finite, LABEL_VALUES).all():
        bad = np.unique(finite[~np.isin(finite, LABEL_VALUES)])[:5]
        raise LabelValueError(None, f"labels to aggregate must be 1, 0, -1 or NaN; got "
                                    f"{', '.join(str(v) for v in bad)}")
    # Rank so that a plain maximum orders negative < uncertain < positive.
    ranked = np.where(labels == -1.0, np.float32(0.5), labels)
    order = np.argsort(codes, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(codes[order]) != 0])
    if len(order) == 0:
        return np.asarray(uniques, dtype=object), np.empty((0, labels.shape[1]), np.float32)
    reduced = np.fmax.reduceat(ranked[order], starts, axis=0)
    reduced[reduced == 0.5] = -1.0
    return np.asarray(uniques, dtype=object), reduced.astype(np.float32)


def parse_label_cells(cells: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Parse CheXpert-style label cells (strings): 1, 0, -1 (any float spelling) or blank.

    Args:
        cells: Strings as read from a CSV (blank = ``""``).

    Returns:
        ``(values, bad)``: ``float32`` values (NaN for blank and for bad cells) and a
        boolean mask of cells holding anything else (``"2"``, ``"yes"``, ``"nan"``...).
    """
    codes, uniques = pd.factorize(cells.fillna("").astype(str).str.strip(), sort=False)
    unique_values = np.full(len(uniques), np.nan, dtype=np.float32)
    unique_bad = np.zeros(len(uniques), dtype=bool)
    for k, text in enumerate(uniques):
        if text == "":
            continue
        try:
            number = float(text)
        except ValueError:
            number = np.nan
        if number in LABEL_VALUES:
            unique_values[k] = number
        else:
            unique_bad[k] = True
    return unique_values[codes], unique_bad[codes]


def count_labels(labels: np.ndarray, pathologies: Sequence[str], policy: LabelPolicy
                 ) -> dict[str, dict[str, int]]:
    """Per-class label counts of targets produced by :func:`apply_policy`.

    Args:
        labels: ``[N, C]`` targets (after the policy; NaN = unknown).
        pathologies: The ``C`` class names.
        policy: The policy the targets were made with (multiclass classes also count
            ``uncertain``).

    Returns:
        Class -> ``{"n": labelled, "positive": ..., "negative": ...}`` plus
        ``"uncertain"`` for multiclass classes; ``n`` counts every non-NaN label.
    """
    labels = np.asarray(labels, dtype=np.float32).reshape(-1, len(pathologies))
    counts: dict[str, dict[str, int]] = {}
    for col, name in enumerate(pathologies):
        column = labels[:, col]
        entry = {"n": int((~np.isnan(column)).sum()), "positive": int((column == 1.0).sum()),
                 "negative": int((column == 0.0).sum())}
        if policy.for_class(name) == "multiclass":
            entry["uncertain"] = int((column == -1.0).sum())
        counts[name] = entry
    return counts
