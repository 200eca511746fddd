"""The models behind the service, loaded once, and the analysis of one radiograph.

:class:`ModelSet` loads the classifier checkpoint and, when their run directories are
given, the pneumothorax cascade (seed 002: gate classifier + U-Net, tuned
post-processing) and the normal-screening ensemble (seed 003: per-disease networks +
SVM at its stored operating point) — each through its predictor in :mod:`cxrlab.inference`,
the same code ``cxrlab predict``, ``seg predict`` and ``screen predict`` run.

:meth:`ModelSet.analyze` decodes one file, preprocesses it for each model, runs the
models (one at a time: Grad-CAM hooks the classifier, so the networks are not shared
between threads) and returns an :class:`Analysis`. It is the two stages the batched
service (:mod:`cxrlab.serve.batching`) runs apart: :meth:`ModelSet.prepare` (decode and
preprocess one file, in any thread) and :meth:`ModelSet.analyze_batch` (one model call
per network for many prepared images, then each image's results).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrlab.errors import ConfigError, InputError
from cxrlab.inference.classifier import ClassifierPredictor
from cxrlab.inference.pneumothorax import PneumothoraxPredictor
from cxrlab.inference.screening import ScreeningPredictor
from cxrlab.io import DEFAULT_MAX_PIXELS, XrayImage, read_image
from cxrlab.io.rle import rle_encode

PRIORITY_GROUPS = ("critical", "abnormal", "no-finding", "normal")
"""Worklist ranks, most urgent first: a critical finding (pneumothorax), abnormal, no
positive finding (no screening run to confirm), definitely normal (screening)."""


@dataclass
class Analysis:
    """The result of one radiograph, before it is stored.

    Attributes:
        image: Format, rows, cols, photometric interpretation, view position.
        findings: One dict per classifier label: ``label``, ``probability``,
            ``threshold``, ``positive``.
        heatmap: ``label``, ``probability``, ``method`` of the Grad-CAM map.
        heatmap_png: The overlay PNG (model input size).
        screening: ``decision``, ``probability``, ``threshold``, ``risk_group``,
            ``likely_diseases``, or None without a screening run.
        pneumothorax: ``present``, ``probability``, ``area_fraction``, ``rle``,
            ``width``, ``height``, or None without a pneumothorax run.
        mask_png: The pneumothorax mask (0/255, source size), or None.
        sop_instance_uid: The DICOM SOP Instance UID (only hashed, never stored).
        study_instance_uid: The DICOM Study Instance UID (likewise).
    """

    image: dict[str, Any]
    findings: list[dict[str, Any]]
    heatmap: dict[str, Any]
    heatmap_png: bytes
    screening: dict[str, Any] | None = None
    pneumothorax: dict[str, Any] | None = None
    mask_png: bytes | None = None
    sop_instance_uid: str | None = field(default=None, repr=False)
    study_instance_uid: str | None = field(default=None, repr=False)

    def priority(self, critical_findings: Iterable[str]) -> tuple[int, str, float]:
        """``(rank, group, score)`` for the worklist: lower rank first, then higher score.

        Critical (rank 0): the pneumothorax model finds a mask, or a classifier label in
        ``critical_findings`` is positive; score = the highest such probability.
        Abnormal (1): the screening decision is abnormal, or (without screening) any
        finding is positive; score = the abnormal probability (or the highest positive
        finding's). No finding (2): no screening run and no positive finding; score = the
        highest finding probability. Normal (3): screening says normal; score = its
        abnormal probability, so the least certain normals come first.
        """
        critical = {name.lower() for name in critical_findings}
        hits = [f["probability"] for f in self.findings if f["positive"] and f["label"].lower() in critical]
        if self.pneumothorax is not None and self.pneumothorax["present"]:
            hits.append(float(self.pneumothorax["probability"]))
        if hits:
            return 0, PRIORITY_GROUPS[0], max(hits)
        positives = [f["probability"] for f in self.findings if f["positive"]]
        if self.screening is not None:
            probability = float(self.screening["probability"])
            if self.screening["decision"] == "abnormal":
                return 1, PRIORITY_GROUPS[1], probability
            return 3, PRIORITY_GROUPS[3], probability
        if positives:
            return 1, PRIORITY_GROUPS[1], max(positives)
        return 2, PRIORITY_GROUPS[2], max((f["probability"] for f in self.findings), default=0.0)


def png_bytes(array: np.ndarray) -> bytes:
    """PNG encoding of a uint8 gray or RGB array (no metadata chunks)."""
    from cxrlab.explain.cam import png_bytes as encode

    return encode(np.ascontiguousarray(array))


class ModelSet:
    """Every model of one service instance, loaded once.

    Args:
        classifier: Classification run directory or checkpoint.
        screening: Screening run directory, or None.
        pneumothorax: Pneumothorax run directory, or None.
        cam_method: Grad-CAM method (a key of :data:`cxrlab.explain.cam.CAM_METHODS`).
        max_pixels: Largest image decoded.
        backend: ``torch``, ``onnx`` or ``onnx-int8``: what runs the networks (the ONNX
            files ``cxrlab export`` wrote); Grad-CAM always runs the classifier in PyTorch.
        providers: ONNX Runtime execution providers (default CPU).
    """

    def __init__(self, classifier: str | Path, screening: str | Path | None = None,
                 pneumothorax: str | Path | None = None, cam_method: str = "gradcam",
                 max_pixels: int | None = None, backend: str = "torch",
                 providers: list[str] | None = None) -> None:
        from cxrlab.explain.cam import CAM_METHODS

        if cam_method not in CAM_METHODS:
            raise ConfigError("cam_method", f"unknown CAM method {cam_method!r}; choose from {', '.join(CAM_METHODS)}")
        self.cam_method = cam_method
        self.max_pixels = max_pixels or DEFAULT_MAX_PIXELS
        self.backend = backend
        self.classifier = ClassifierPredictor.from_run_dir(classifier, backend=backend, providers=providers)
        self.screening = (ScreeningPredictor.from_run_dir(screening, backend=backend, providers=providers)
                          if screening is not None else None)
        self.pneumothorax = (PneumothoraxPredictor.from_run_dir(pneumothorax, backend=backend, providers=providers)
                             if pneumothorax is not None else None)
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Any) -> ModelSet:
        """Load the models a :class:`~cxrlab.serve.settings.ServeSettings` names."""
        return cls(settings.classifier, settings.screening, settings.pneumothorax,
                   cam_method=settings.cam_method, max_pixels=settings.max_pixels, backend=settings.backend)

    def versions(self) -> dict[str, dict[str, Any]]:
        """Role -> ``{kind, name, version, ...}`` of every loaded model."""
        out = {"classifier": self.classifier.info.to_dict()}
        if self.screening is not None:
            out["screening"] = self.screening.info.to_dict()
        if self.pneumothorax is not None:
            out["pneumothorax"] = self.pneumothorax.info.to_dict()
        return out

    def prepare(self, path: str | Path, image: XrayImage | None = None) -> PreparedImage:
        """Decode one DICOM/PNG/JPEG file (unless already decoded) and preprocess it for
        every model (thread-safe).

        Args:
            path: The file.
            image: The file already decoded (by :class:`cxrlab.serve.decode.DecodePool`),
                or None to decode it here.

        Raises:
            InputError: The file is not a readable image (subclasses say why).
        """
        if image is None:
            image = read_image(path, max_pixels=self.max_pixels)
        pixels = image.pixels
        if pixels.ndim != 2:
            raise InputError(path, f"expected a 2-D radiograph, got pixels of shape {pixels.shape}")
        return PreparedImage(path=Path(path), pixels=pixels, meta=image.meta,
                             classifier_input=self.classifier.tensor(pixels),
                             screening_input=self.screening.tensor(pixels) if self.screening is not None else None)

    def analyze_batch(self, items: Sequence[PreparedImage]) -> list[Analysis]:
        """Run every model on prepared images, one batched call per network; results in order.

        The classifier's probabilities (:meth:`ClassifierPredictor.probabilities`, whatever
        its backend), the Grad-CAM heatmaps (one forward and backward pass of the torch
        classifier for the batch, each image's own target), the screening networks and the
        pneumothorax cascade each see the whole batch at once. Calls are serialised
        (Grad-CAM hooks the classifier).
        """
        from cxrlab.explain.cam import heatmaps

        if not items:
            return []
        with self._lock:
            probabilities = self.classifier.probabilities(torch.stack([item.classifier_input for item in items]))
            findings = [self.classifier.findings(p) for p in probabilities]
            cams = heatmaps(self.classifier.model, [item.classifier_input for item in items],
                            [_cam_target(found) for found in findings], self.cam_method, self.classifier.labels)
            screening: list[dict[str, Any] | None] = [None] * len(items)
            if self.screening is not None:
                screening = list(self.screening.predict_inputs(
                    torch.stack([item.screening_input for item in items])))  # type: ignore[misc]
            ptx: list[tuple[np.ndarray, float, float | None] | None] = [None] * len(items)
            if self.pneumothorax is not None:
                ptx = list(self.pneumothorax.predict_batch([item.pixels for item in items]))
        return [_analysis(*parts) for parts in zip(items, findings, cams, screening, ptx)]

    def analyze(self, path: str | Path, image: XrayImage | None = None) -> Analysis:
        """Decode one DICOM/PNG/JPEG file and run every model on it: a batch of one
        (:meth:`prepare`, whose arguments and errors these are, then :meth:`analyze_batch`)."""
        return self.analyze_batch([self.prepare(path, image)])[0]


@dataclass
class PreparedImage:
    """One decoded radiograph and each model's input (:meth:`ModelSet.prepare`).

    Attributes:
        path: The file it was read from.
        pixels: The decoded 2-D pixels (the pneumothorax cascade preprocesses them itself).
        meta: The image's metadata (:class:`cxrlab.io.ImageMeta`).
        classifier_input: The classifier's ``(C, S, S)`` input.
        screening_input: The screening networks' ``(C, S, S)`` input, or None without screening.
    """

    path: Path
    pixels: np.ndarray = field(repr=False)
    meta: Any = field(repr=False)
    classifier_input: torch.Tensor = field(repr=False)
    screening_input: torch.Tensor | None = field(default=None, repr=False)


def _analysis(item: PreparedImage, findings: list[dict[str, Any]], cam: Any, screening: dict[str, Any] | None,
              ptx: tuple[np.ndarray, float, float | None] | None) -> Analysis:
    """One image's :class:`Analysis` from its models' outputs."""
    pneumothorax, mask_png = None, None
    if ptx is not None:
        mask, probability, _ = ptx
        pneumothorax = {"present": bool(mask.any()), "probability": probability,
                        "area_fraction": float(mask.mean()), "rle": rle_encode(mask),
                        "width": int(mask.shape[1]), "height": int(mask.shape[0])}
        mask_png = png_bytes(mask.astype(np.uint8) * 255)
    meta, x = item.meta, item.classifier_input
    return Analysis(
        image={"format": meta.format, "rows": int(meta.shape[0]), "cols": int(meta.shape[1]),
               "photometric": meta.photometric, "view_position": meta.view_position,
               "bits_stored": meta.bits_stored},
        findings=findings,
        heatmap={"label": cam.label, "probability": float(cam.probability), "method": cam.method,
                 "size": [int(x.shape[-2]), int(x.shape[-1])]},
        heatmap_png=cam.overlay_png, screening=screening, pneumothorax=pneumothorax, mask_png=mask_png,
        sop_instance_uid=meta.sop_instance_uid, study_instance_uid=meta.study_id)


def _cam_target(findings: list[dict[str, Any]]) -> int:
    """The finding the heatmap explains: the positive one furthest above its threshold,
    else the most probable one."""
    positives = [i for i, f in enumerate(findings) if f["positive"]]
    if positives:
        return max(positives, key=lambda i: findings[i]["probability"] / max(findings[i]["threshold"], 1e-6))
    return int(np.argmax([f["probability"] for f in findings]))


def describe(models: ModelSet) -> str:
    """One JSON line naming the loaded models (for the startup log)."""
    return json.dumps({role: {"name": m["name"], "version": m["version"]} for role, m in models.versions().items()})
