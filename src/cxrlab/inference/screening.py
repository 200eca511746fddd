"""Normal-screening prediction: a run's networks, its SVM and operating point."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrlab.config.screening import load_screening_config, slug
from cxrlab.errors import ConfigError, InputError, MissingFileError, SkipLog

log = logging.getLogger(__name__)


def load_variant(run_dir: Path, variant: str, diseases: list[str]) -> list[Any]:
    """The trained networks of a variant in disease order (one for ``shared``)."""
    from cxrlab.models.multitask import load_multitask_checkpoint

    folder = Path(run_dir) / variant
    names = ["shared"] if variant == "shared" else [f"model_{slug(d)}" for d in diseases]
    return [load_multitask_checkpoint(folder / f"{name}.pt")[0].eval() for name in names]


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def abnormal_probability(scores: np.ndarray, point: Mapping[str, float]) -> np.ndarray:
    """Platt-scaled probability of *abnormal* for SVM scores."""
    return 1.0 / (1.0 + np.exp(-(point["platt_a"] * np.asarray(scores) + point["platt_b"])))


def load_second_classifier(run_dir: Path, variant: str) -> tuple[Any, dict[str, float]]:
    import pickle

    folder = Path(run_dir) / variant
    if not (folder / "svm.pkl").is_file():
        raise MissingFileError(folder / "svm.pkl", "no trained SVM; was the run finished?")
    svm = pickle.loads((folder / "svm.pkl").read_bytes())
    return svm, json.loads((folder / "operating_point.json").read_text())


def predict_screening(run_dir: str | Path, paths: Sequence[str | Path], variant: str | None = None,
                      skips: SkipLog | None = None, top: int = 3) -> pd.DataFrame:
    """Screen images with a trained run: normal/abnormal, probability, likely diseases, risk.

    Returns:
        One row per readable image: ``path``, ``decision`` (normal/abnormal),
        ``abnormal_probability``, ``svm_score``, ``threshold``, ``likely_diseases`` (up to
        ``top`` diseases by p(target), ``;``-separated, each with its probability) and
        ``risk_group`` (the first configured group holding a disease whose model predicts
        its target class, ``none`` for a normal call, ``unspecified`` otherwise).
    """
    import torch

    from cxrlab.data.screening import screening_preprocess
    from cxrlab.data.transforms import to_tensor
    from cxrlab.io import read_image

    run_dir = Path(run_dir)
    cfg = load_screening_config(run_dir / "config.yaml")
    variant = variant or ("ensemble" if "ensemble" in cfg.model.variants else cfg.model.variants[0])
    if variant not in cfg.model.variants:
        raise ConfigError("variant", f"run has variants {list(cfg.model.variants)}, not {variant!r}")
    nets = load_variant(run_dir, variant, list(cfg.data.diseases))
    svm, point = load_second_classifier(run_dir, variant)
    skips = skips or SkipLog("raise")
    pcfg = cfg.preprocess()
    records = []
    for path in paths:
        try:
            image = screening_preprocess(read_image(path).pixels, pcfg)
        except InputError as err:
            skips.handle(err)
            continue
        x = to_tensor(image, cfg.data.channels, cfg.data.normalization)[None]
        with torch.inference_mode():
            logits = np.concatenate([net(x, reconstruct=False)[0].reshape(1, -1, cfg.model.num_classes)
                                     .numpy() for net in nets], axis=1)
        score = float(svm.decision_function(logits.reshape(1, -1))[0])
        probs = _softmax(logits[0])
        p_target = probs[:, 1]
        order = np.argsort(-p_target)[:top]
        abnormal = score >= point["threshold"]
        found = {cfg.data.diseases[d] for d in range(len(cfg.data.diseases))
                 if probs[d].argmax() == 1}
        group = "none" if not abnormal else next(
            (g for g, members in cfg.risk_groups.items() if found & set(members)), "unspecified")
        records.append({"path": str(path), "decision": "abnormal" if abnormal else "normal",
                        "abnormal_probability": float(abnormal_probability(score, point)),
                        "svm_score": score, "threshold": point["threshold"],
                        "likely_diseases": ";".join(f"{cfg.data.diseases[d]}={p_target[d]:.3f}"
                                                    for d in order),
                        "risk_group": group})
    return pd.DataFrame(records, columns=["path", "decision", "abnormal_probability", "svm_score",
                                          "threshold", "likely_diseases", "risk_group"])
