"""A SYNTHETIC phantom set for the normal-screening ensemble, in the generic CSV layout.

:func:`cxrlab.data.synthetic_layouts.write_dataset` draws findings independently; the
screening pipeline needs a controlled mix instead, so this module plans one and writes
it with the same conventions as the ``generic`` layout (``labels.csv`` with
:data:`~cxrlab.data.synthetic_layouts.GENERIC_HEADER`, ``images/*.png``,
``masks/*.png`` holding the union of the finding masks of hard-labelled images,
``README.txt`` and ``synthetic_manifest.json`` from which
:func:`~cxrlab.data.synthetic_layouts.manifest_phantom` re-renders any image):

* **seen** findings: each abnormal image has one seen finding, some a second one;
* **normals**: no finding;
* **weak labels**: a share of the training images has ``weak=1`` and no mask
  (seed 003 trains on 6,628 hard-labelled images with masks and 18,086 weak ones);
* **unseen** findings: images whose only finding is of a type held out of training
  (seed 003 §4.3.5: pneumonia, edema, fracture); they are put in the ``test`` split
  and the screening pipeline keeps them out of training by their label columns.

Every label cell is 1 or 0 (weak rows may get blanks with ``blank_rate``); valid and
test images are hard-labelled. Read it back with the generic adapter::

    load_dataset("generic", csv=out / "labels.csv", label_cols=list(GENERIC_COLUMNS.values()),
                 mask_col="mask_path", patient_col="patient_id", study_col="study_id",
                 view_col="view", weak_col="weak", split_col="split")
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxrlab.data.synthetic import FINDINGS, check_findings, generate_phantom
from cxrlab.data.synthetic_layouts import (GENERIC_COLUMNS, GENERIC_HEADER, MANIFEST, README,
                                           README_TEXT, Progress, _commit, _encode, _prepare,
                                           _write_text)
from cxrlab.errors import ConfigError

DEFAULT_SEEN = ("pneumothorax", "effusion", "consolidation", "atelectasis", "cardiomegaly")
DEFAULT_UNSEEN = ("edema", "infiltrates")
LABEL_COLUMNS = list(GENERIC_COLUMNS.values())
"""Label columns of ``labels.csv``: every phantom finding, capitalized (``Effusion``...)."""
ADAPTER_OPTIONS = {"path_col": "path", "label_cols": LABEL_COLUMNS, "mask_col": "mask_path",
                   "patient_col": "patient_id", "study_col": "study_id", "view_col": "view",
                   "weak_col": "weak", "split_col": "split"}
"""Keyword arguments of the generic adapter for this layout (add ``csv``)."""


def column_name(finding: str) -> str:
    """The ``labels.csv`` column of a phantom finding (``"effusion"`` -> ``"Effusion"``)."""
    return GENERIC_COLUMNS[check_findings([finding])[0]]


def _fraction(name: str, value: float) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ConfigError(name, f"must lie in [0, 1], got {value!r}")
    return float(value)


def plan_screening_set(n: int, seen: Sequence[str], unseen: Sequence[str], rng: np.random.Generator,
                       normal_fraction: float, unseen_fraction: float, multi_fraction: float
                       ) -> list[tuple[str, ...]]:
    """Findings of each of ``n`` images: normals, balanced seen findings (some with a second
    seen finding) and images with one unseen finding, in random order."""
    n_unseen = int(round(unseen_fraction * n)) if unseen else 0
    n_normal = int(round(normal_fraction * n))
    n_seen = n - n_unseen - n_normal
    if n_seen < len(seen) or n_normal < 1:
        raise ConfigError("n", f"{n} images leave {n_seen} abnormal and {n_normal} normal ones; "
                               f"need at least one normal and one per seen finding ({len(seen)})")
    plan: list[tuple[str, ...]] = [()] * n_normal
    for k in range(n_seen):
        first = seen[k % len(seen)]
        findings = {first}
        if len(seen) > 1 and rng.random() < multi_fraction:
            findings.add(str(rng.choice([s for s in seen if s != first])))
        plan.append(check_findings(findings))
    plan += [(unseen[k % len(unseen)],) for k in range(n_unseen)]
    return [plan[i] for i in rng.permutation(n)]


def write_screening_dataset(out: str | Path, n: int, size: int, seed: int, *,
                            seen: Sequence[str] = DEFAULT_SEEN,
                            unseen: Sequence[str] = DEFAULT_UNSEEN,
                            normal_fraction: float = 0.4, unseen_fraction: float = 0.1,
                            multi_fraction: float = 0.15, weak_fraction: float = 0.3,
                            valid_fraction: float = 0.15, test_fraction: float = 0.2,
                            blank_rate: float = 0.0, min_severity: float = 0.35,
                            overwrite: bool = False, progress: Progress | None = None) -> Path:
    """Render and write a screening phantom set (module docstring) into ``out``.

    Args:
        out: Target folder (missing or empty, or an earlier synthetic set with ``overwrite``).
        n: Number of images.
        size: Image side in pixels (>= 32).
        seed: Seed of every random choice; the same arguments give the same files.
        seen: Findings the ensemble is trained on (:data:`~cxrlab.data.synthetic.FINDINGS`).
        unseen: Findings held out of training (disjoint from ``seen``).
        normal_fraction: Share of normal images.
        unseen_fraction: Share of images with one unseen finding.
        multi_fraction: Share of seen-finding images that get a second seen finding.
        weak_fraction: Share of training images labelled weakly (``weak=1``, no mask).
        valid_fraction, test_fraction: Shares of the other images per split (by patient;
            one image per patient).
        blank_rate: Share of a weak row's negative cells left blank (unknown).
        min_severity: Findings get a severity drawn uniformly from ``[min_severity, 1]``.

    Returns:
        ``out`` as a :class:`Path`.

    Raises:
        ConfigError: Unknown or overlapping findings, bad fractions or sizes, or ``out``
            may not be replaced.
    """
    seen, unseen = list(check_findings(seen)), list(check_findings(unseen))
    if not seen:
        raise ConfigError("seen", "need at least one seen finding")
    if set(seen) & set(unseen):
        raise ConfigError("unseen", f"{sorted(set(seen) & set(unseen))} are both seen and unseen")
    fractions = {name: _fraction(name, value) for name, value in (
        ("normal_fraction", normal_fraction), ("unseen_fraction", unseen_fraction),
        ("multi_fraction", multi_fraction), ("weak_fraction", weak_fraction),
        ("valid_fraction", valid_fraction), ("test_fraction", test_fraction),
        ("blank_rate", blank_rate), ("min_severity", min_severity))}
    if valid_fraction + test_fraction >= 1.0:
        raise ConfigError("test_fraction", "valid_fraction + test_fraction must be below 1")
    if int(size) != size or size < 32:
        raise ConfigError("size", f"image size must be an integer >= 32, got {size!r}")
    rng = np.random.default_rng([seed, 0, 7003])
    plan = plan_screening_set(int(n), seen, unseen, rng, normal_fraction, unseen_fraction,
                              multi_fraction)
    order = rng.permutation(n)
    n_valid, n_test = int(round(valid_fraction * n)), int(round(test_fraction * n))
    split = np.array(["train"] * n, dtype=object)
    split[order[:n_valid]] = "valid"
    split[order[n_valid:n_valid + n_test]] = "test"
    is_unseen = np.array([bool(f) and set(f) <= set(unseen) for f in plan])
    split[is_unseen] = "test"
    train_rows = np.flatnonzero(split == "train")
    weak = np.zeros(n, dtype=bool)
    weak[rng.permutation(train_rows)[:int(round(weak_fraction * len(train_rows)))]] = True

    out = Path(out)
    tmp = _prepare(out, overwrite)
    try:
        rows, records = [GENERIC_HEADER], []
        for index, findings in enumerate(plan):
            severity = {f: round(float(rng.uniform(min_severity, 1.0)), 4) for f in findings}
            phantom = generate_phantom(np.random.default_rng([seed, 1, index]), int(size),
                                       findings, bits=8, severity=severity)
            name = f"{index + 1:06d}.png"
            _encode(tmp / "images" / name, phantom.image)
            mask_rel = "" if weak[index] else f"masks/{name}"
            if mask_rel:
                union = np.zeros((size, size), dtype=bool)
                for mask in phantom.masks.values():
                    union |= mask
                _encode(tmp / mask_rel, union.astype(np.uint8) * np.uint8(255))
            patient = f"P{index + 1:05d}"
            view = ("PA", "AP")[rng.random() < 0.3]
            cells = ["1" if f in findings else
                     "" if weak[index] and rng.random() < blank_rate else "0" for f in FINDINGS]
            rows.append(",".join([f"images/{name}", patient, f"{patient}_S1", view,
                                  str(split[index]), str(int(weak[index])), mask_rel, *cells]))
            records.append({"index": index, "path": f"images/{name}", "findings": list(findings),
                            "severity": severity, "bits": 8, "patient": patient,
                            "split": str(split[index]), "weak": bool(weak[index]),
                            "mask_path": mask_rel, "view": view,
                            "unseen": bool(is_unseen[index])})
            if progress is not None:
                progress(index + 1, n)
        _write_text(tmp / "labels.csv", rows)
        counts: dict[str, Any] = {f: sum(f in r["findings"] for r in records) for f in FINDINGS}
        counts["normal"] = sum(not r["findings"] for r in records)
        counts["weak"] = int(weak.sum())
        counts["unseen_images"] = int(is_unseen.sum())
        manifest = {"note": "SYNTHETIC PHANTOM DATA — not real patients", "layout": "generic",
                    "kind": "screening", "n": int(n), "size": int(size), "seed": int(seed),
                    "seen": seen, "unseen": unseen, "options": fractions, "counts": counts,
                    "images": records}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False),
                                    encoding="utf-8")
        (tmp / README).write_text(README_TEXT.format(layout="generic (screening)", n=n,
                                                     size=size, seed=seed), encoding="utf-8")
        _commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
