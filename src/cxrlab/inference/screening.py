"""Normal-screening prediction: a run's networks, its SVM and operating point."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxrlab.config.screening import load_screening_config, slug
from cxrlab.data.screening import screening_preprocess
from cxrlab.data.transforms import to_tensor
from cxrlab.errors import ConfigError, InputError, MissingFileError, SkipLog
from cxrlab.inference.backends import OnnxBackend, TorchBackend, open_backend
from cxrlab.inference.base import ModelInfo, file_version, input_shape
from cxrlab.io import read_image
from cxrlab.models.multitask import load_multitask_checkpoint

log = logging.getLogger(__name__)


def variant_checkpoints(run_dir: Path, variant: str, diseases: list[str]) -> list[Path]:
    """The checkpoint files of a variant in disease order (one, ``shared.pt``, for ``shared``)."""
    names = ["shared"] if variant == "shared" else [f"model_{slug(d)}" for d in diseases]
    return [Path(run_dir) / variant / f"{name}.pt" for name in names]


def load_variant(run_dir: Path, variant: str, diseases: list[str]) -> list[Any]:
    """The trained networks of a variant in disease order (one for ``shared``)."""
    return [load_multitask_checkpoint(path)[0].eval() for path in variant_checkpoints(run_dir, variant, diseases)]


class ClassificationLogits(torch.nn.Module):
    """A multi-task network's classification logits alone (no reconstruction): what the
    predictor runs and what ``cxrlab export`` writes to ONNX."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, reconstruct=False)[0]


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


class ScreeningPredictor:
    """A normal-screening run, loaded once: the variant's networks, its SVM and operating point.

    The networks give logits, the SVM a score, the stored operating point the decision and
    (Platt) the abnormal probability, the configured risk groups the group.

    Args:
        run_dir: The run (``cxrlab screen train``).
        variant: ``ensemble`` or ``shared``; None = the ensemble when trained.
        top: How many likely diseases to report.
        backend: ``torch``, ``onnx`` or ``onnx-int8`` for the networks (the files
            ``cxrlab export RUN_DIR`` wrote); the SVM is scikit-learn either way.
        providers: ONNX Runtime execution providers. threads: Its intra-op threads.

    Raises:
        MissingFileError: Not a screening run, an untrained SVM, or no ONNX export.
        OnnxModelError: An ONNX file from another model (named).
    """

    def __init__(self, run_dir: str | Path, variant: str | None = None, top: int = 3, backend: str = "torch",
                 providers: list[str] | None = None, threads: int | None = None) -> None:
        run_dir = Path(run_dir)
        if not (run_dir / "config.yaml").is_file():
            raise MissingFileError(run_dir, "not a screening run directory (no config.yaml)")
        self.cfg = load_screening_config(run_dir / "config.yaml")
        variants = list(self.cfg.model.variants)
        self.variant = variant or ("ensemble" if "ensemble" in variants else variants[0])
        if self.variant not in variants:
            raise ConfigError("variant", f"run has variants {variants}, not {self.variant!r}")
        self.diseases = list(self.cfg.data.diseases)
        self.nets = load_variant(run_dir, self.variant, self.diseases)
        self.svm, self.point = load_second_classifier(run_dir, self.variant)
        self.top = top
        self.preprocessing = self.cfg.preprocess()
        checkpoints = variant_checkpoints(run_dir, self.variant, self.diseases)
        self.backends: list[TorchBackend | OnnxBackend] = [TorchBackend(ClassificationLogits(net)) for net in self.nets]
        if backend != "torch":
            shape = input_shape(self.tensor)
            self.backends = [open_backend(backend, net, path, {"model_version": file_version([path])}, shape,
                                          providers=providers, threads=threads)
                             for net, path in zip(self.nets, checkpoints)]
        folder = run_dir / self.variant
        files = checkpoints + [folder / "svm.pkl", folder / "operating_point.json"]
        self.info = ModelInfo(kind="screening", name=run_dir.name, version=file_version(files),
                              files=tuple(map(str, files)),
                              details={"variant": self.variant, "diseases": self.diseases,
                                       "target_sensitivity": self.point.get("target_sensitivity"),
                                       "backend": backend})

    @classmethod
    def from_run_dir(cls, run_dir: str | Path, variant: str | None = None, top: int = 3, backend: str = "torch",
                     providers: list[str] | None = None, threads: int | None = None) -> ScreeningPredictor:
        """Load a screening run directory (see the class)."""
        return cls(run_dir, variant=variant, top=top, backend=backend, providers=providers, threads=threads)

    def tensor(self, pixels: np.ndarray) -> torch.Tensor:
        """The ``(C, S, S)`` input of the networks for decoded pixels."""
        image = screening_preprocess(pixels, self.preprocessing)
        return to_tensor(image, self.cfg.data.channels, self.cfg.data.normalization)

    def logits(self, batch: torch.Tensor) -> np.ndarray:
        """Concatenated logits ``[N, D, classes]`` of a ``(N, C, S, S)`` batch of inputs (one call per network)."""
        k = self.cfg.model.num_classes
        n = int(batch.shape[0])
        return np.concatenate([backend(batch).reshape(n, -1, k) for backend in self.backends], axis=1)

    def predict(self, pixels: np.ndarray) -> dict[str, Any]:
        """Decision, abnormal probability, threshold, SVM score, likely diseases, risk group."""
        return self.predict_inputs(self.tensor(pixels)[None])[0]

    def predict_inputs(self, batch: torch.Tensor) -> list[dict[str, Any]]:
        """:meth:`predict` of a ``(N, C, S, S)`` batch of :meth:`tensor` inputs (one network call each)."""
        logits = self.logits(batch)
        scores = self.svm.decision_function(logits.reshape(len(logits), -1))
        return [self._decide(row, float(score)) for row, score in zip(logits, scores)]

    def _decide(self, logits: np.ndarray, score: float) -> dict[str, Any]:
        """The result of one image from its logits ``[D, classes]`` and SVM score."""
        probs = _softmax(logits)
        p_target = probs[:, 1]
        abnormal = score >= float(self.point["threshold"])
        found = {self.diseases[d] for d in range(len(self.diseases)) if probs[d].argmax() == 1}
        group = "none" if not abnormal else next(
            (g for g, members in self.cfg.risk_groups.items() if found & set(members)), "unspecified")
        order = np.argsort(-p_target)[:self.top]
        return {"decision": "abnormal" if abnormal else "normal",
                "probability": float(abnormal_probability(score, self.point)),
                "threshold": float(self.point["threshold"]), "svm_score": score, "risk_group": group,
                "likely_diseases": [{"disease": self.diseases[d], "probability": float(p_target[d])}
                                    for d in order]}


def predict_screening(run_dir: str | Path, paths: Sequence[str | Path], variant: str | None = None,
                      skips: SkipLog | None = None, top: int = 3, backend: str = "torch",
                      providers: list[str] | None = None) -> pd.DataFrame:
    """Screen image files with a trained run (:class:`ScreeningPredictor`).

    Returns:
        One row per readable image: ``path``, ``decision`` (normal/abnormal),
        ``abnormal_probability``, ``svm_score``, ``threshold``, ``likely_diseases`` (up to
        ``top`` diseases by p(target), ``;``-separated, each with its probability) and
        ``risk_group`` (the first configured group holding a disease whose model predicts
        its target class, ``none`` for a normal call, ``unspecified`` otherwise).
    """
    predictor = ScreeningPredictor(run_dir, variant=variant, top=top, backend=backend, providers=providers)
    skips = skips or SkipLog("raise")
    records = []
    for path in paths:
        try:
            result = predictor.predict(read_image(path).pixels)
        except InputError as err:
            skips.handle(err)
            continue
        records.append({"path": str(path), "decision": result["decision"],
                        "abnormal_probability": result["probability"], "svm_score": result["svm_score"],
                        "threshold": result["threshold"],
                        "likely_diseases": ";".join(f"{d['disease']}={d['probability']:.3f}"
                                                    for d in result["likely_diseases"]),
                        "risk_group": result["risk_group"]})
    return pd.DataFrame(records, columns=["path", "decision", "abnormal_probability", "svm_score",
                                          "threshold", "likely_diseases", "risk_group"])
