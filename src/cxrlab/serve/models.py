"""The models behind the service, loaded once, and the analysis of one radiograph.

:class:`ModelSet` loads the classifier checkpoint and, when their run directories are
given, the pneumothorax cascade (seed 002: gate classifier + U-Net, tuned
post-processing) and the normal-screening ensemble (seed 003: per-disease networks +
SVM at its stored operating point). The pipelines' own prediction functions
(:func:`cxrlab.tasks.pneumothorax.evaluate.predict_masks`,
:func:`cxrlab.tasks.screening.evaluate.predict_screening`) load their networks on
every call; the adapters here load the same files once, through the same public
loaders, and run the same steps per image. Everything beyond the classifier is
imported lazily, so the service starts without those modules when their runs are not
asked for.

:meth:`ModelSet.analyze` decodes one file, preprocesses it for each model, runs the
models (one at a time: Grad-CAM hooks the classifier, so the networks are not shared
between threads) and returns an :class:`Analysis`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrlab.errors import ConfigError, InputError, MissingFileError

PRIORITY_GROUPS = ("critical", "abnormal", "no-finding", "normal")
"""Worklist ranks, most urgent first: a critical finding (pneumothorax), abnormal, no
positive finding (no screening run to confirm), definitely normal (screening)."""


@dataclass(frozen=True)
class ModelInfo:
    """What a response says about a loaded model."""

    kind: str
    name: str
    version: str
    files: tuple[str, ...]
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "version": self.version, **self.details}


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


def file_version(paths: Sequence[Path]) -> str:
    """First 12 hex digits of the SHA-256 over the files' contents (in the order given)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


def png_bytes(array: np.ndarray) -> bytes:
    """PNG encoding of a uint8 gray or RGB array (no metadata chunks)."""
    from cxrlab.explain.cam import png_bytes as encode

    return encode(np.ascontiguousarray(array))


class ClassifierAdapter:
    """A cxrlab classifier checkpoint: probabilities, decisions at its stored thresholds, CAMs.

    Args:
        path: A ``.pt`` checkpoint or a classification run directory (``best_auroc.pt``).
        kind: Name of the role in responses (``classifier``, ``pneumothorax-gate``).
    """

    def __init__(self, path: str | Path, kind: str = "classifier") -> None:
        from cxrlab.inference.classifier import load_predictor, resolve_checkpoint

        checkpoint = resolve_checkpoint(path)
        self.model, self.meta = load_predictor(checkpoint)
        self.labels: list[str] = [str(label) for label in self.meta.get("labels") or []]
        if len(self.labels) != int(self.meta.get("num_classes", len(self.labels))) or not self.labels:
            raise ConfigError(checkpoint, "the checkpoint's metadata lists no labels for its outputs")
        stored = self.meta.get("thresholds") or {}
        self.thresholds = {label: float(stored.get(label, 0.5)) for label in self.labels}
        name = self.meta.get("run_name") or (Path(path).name if Path(path).is_dir() else checkpoint.stem)
        self.info = ModelInfo(kind=kind, name=str(name), version=file_version([checkpoint]), files=(str(checkpoint),),
                              details={"arch": self.meta.get("arch"), "labels": list(self.labels),
                                       "input_size": self.meta.get("input_size")})

    def tensor(self, pixels: np.ndarray) -> torch.Tensor:
        """The ``(C, S, S)`` input of this model for decoded pixels (as training preprocessed)."""
        from cxrlab.data.transforms import PreprocessConfig, preprocess, to_tensor

        cfg = PreprocessConfig.from_dict(self.meta["preprocessing"])
        return to_tensor(preprocess(pixels, cfg), channels=int(self.meta["in_chans"]),
                         normalization=self.meta["normalization"])

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor) -> np.ndarray:
        """Sigmoid probabilities ``[K]`` of one ``(C, S, S)`` input."""
        return torch.sigmoid(self.model(x[None]).float())[0].numpy()

    def findings(self, probs: np.ndarray) -> list[dict[str, Any]]:
        """One dict per label: probability, threshold and the decision at it."""
        return [{"label": label, "probability": float(p), "threshold": self.thresholds[label],
                 "positive": bool(p >= self.thresholds[label])} for label, p in zip(self.labels, probs)]


class PneumothoraxAdapter:
    """A pneumothorax run directory (:mod:`cxrlab.tasks.pneumothorax.train`), loaded once.

    Uses the ``cascade`` model (gate + One Case U-Net) with its tuned post-processing
    when the run has it, else the ``baseline`` U-Net; the same steps as
    :func:`cxrlab.tasks.pneumothorax.evaluate.predict_masks`.
    """

    def __init__(self, run_dir: str | Path) -> None:
        from cxrlab.models.segmentation import load_segmentation_checkpoint
        from cxrlab.inference.pneumothorax import gate_checkpoint
        from cxrlab.inference.pneumothorax import choose_postprocess

        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise MissingFileError(run_dir, "pneumothorax run directory not found")
        try:
            gate_path = gate_checkpoint(run_dir)     # the checkpoint `seg predict` uses
        except MissingFileError:
            gate_path = None
        self.model_name = "cascade" if gate_path is not None and gate_path.is_file() else "baseline"
        try:
            self.row, self.post = choose_postprocess(run_dir, self.model_name)
        except ConfigError:
            if self.model_name != "cascade":
                raise
            self.model_name = "baseline"
            self.row, self.post = choose_postprocess(run_dir, self.model_name)
        unet_path = run_dir / ("baseline" if self.model_name == "baseline" else "one_case") / "best.pt"
        self.unet, self.meta = load_segmentation_checkpoint(unet_path)
        self.unet.eval()
        self.gate = (ClassifierAdapter(gate_path, kind="pneumothorax-gate")
                     if self.model_name == "cascade" else None)
        if self.gate is not None and "Pneumothorax" not in self.gate.labels:
            raise ConfigError(run_dir / "gate", f"the gate predicts {self.gate.labels}, not Pneumothorax")
        files = [unet_path] + ([Path(self.gate.info.files[0])] if self.gate else [])
        self.info = ModelInfo(kind="pneumothorax", name=run_dir.name, version=file_version(files),
                              files=tuple(map(str, files)),
                              details={"model": self.model_name, "postprocess": self.row,
                                       "encoder": self.meta.get("encoder")})

    def inputs(self, pixels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The U-Net's and the gate's inputs for decoded pixels."""
        from cxrlab.data.transforms import PreprocessConfig, preprocess, to_tensor

        cfg = PreprocessConfig.from_dict(self.meta["preprocessing"])
        x = to_tensor(preprocess(pixels, cfg), channels=int(self.meta["in_chans"]),
                      normalization=self.meta["normalization"])
        return x, (self.gate.tensor(pixels) if self.gate is not None else None)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, gate_x: torch.Tensor | None, shape: tuple[int, int]) -> tuple[np.ndarray, float]:
        """``(mask, probability)``: bool mask of the source ``shape`` and the probability of
        pneumothorax (the gate's, or the U-Net's highest pixel probability without one)."""
        from cxrlab.data.transforms import PreprocessConfig
        from cxrlab.models.segmentation import foreground_probability
        from cxrlab.inference.postprocess import hflip_tta, restore_mask

        def probability(images: torch.Tensor) -> torch.Tensor:
            return foreground_probability(self.unet(images))

        batch = x[None]
        probs = hflip_tta(probability, batch) if self.post.tta else probability(batch)
        gate = None
        if self.gate is not None and gate_x is not None:
            gate = np.array([self.gate.probabilities(gate_x)[self.gate.labels.index("Pneumothorax")]])
        mask = self.post.masks(probs[:, 0].numpy(), gate)[0]
        pad = PreprocessConfig.from_dict(self.meta["preprocessing"]).pad_square
        p = float(gate[0]) if gate is not None else float(probs.max())
        return restore_mask(mask, shape, pad), p


class ScreeningAdapter:
    """A normal-screening run directory (:mod:`cxrlab.tasks.screening.train`), loaded once.

    The same steps as :func:`cxrlab.tasks.screening.evaluate.predict_screening`: the
    variant's networks give logits, the SVM a score, the stored operating point the
    decision and (Platt) the abnormal probability, the configured risk groups the group.
    """

    def __init__(self, run_dir: str | Path, variant: str | None = None, top: int = 3) -> None:
        from cxrlab.config.screening import load_screening_config, slug
        from cxrlab.inference.screening import load_variant
        from cxrlab.inference.screening import load_second_classifier

        run_dir = Path(run_dir)
        self.cfg = load_screening_config(run_dir / "config.yaml")
        variants = list(self.cfg.model.variants)
        self.variant = variant or ("ensemble" if "ensemble" in variants else variants[0])
        if self.variant not in variants:
            raise ConfigError("variant", f"run has variants {variants}, not {self.variant!r}")
        self.diseases = list(self.cfg.data.diseases)
        self.nets = load_variant(run_dir, self.variant, self.diseases)
        self.svm, self.point = load_second_classifier(run_dir, self.variant)
        self.top = top
        folder = run_dir / self.variant
        names = ["shared.pt"] if self.variant == "shared" else [f"model_{slug(d)}.pt" for d in self.diseases]
        files = [folder / n for n in names] + [folder / "svm.pkl", folder / "operating_point.json"]
        self.info = ModelInfo(kind="screening", name=run_dir.name, version=file_version(files),
                              files=tuple(map(str, files)),
                              details={"variant": self.variant, "diseases": self.diseases,
                                       "target_sensitivity": self.point.get("target_sensitivity")})

    def tensor(self, pixels: np.ndarray) -> torch.Tensor:
        from cxrlab.data.screening import screening_preprocess
        from cxrlab.data.transforms import to_tensor

        image = screening_preprocess(pixels, self.cfg.preprocess())
        return to_tensor(image, self.cfg.data.channels, self.cfg.data.normalization)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> dict[str, Any]:
        """Decision, abnormal probability, threshold, SVM score, likely diseases, risk group."""
        from cxrlab.inference.screening import abnormal_probability

        k = self.cfg.model.num_classes
        logits = np.concatenate([net(x[None], reconstruct=False)[0].reshape(1, -1, k).numpy()
                                 for net in self.nets], axis=1)
        score = float(self.svm.decision_function(logits.reshape(1, -1))[0])
        probs = torch.softmax(torch.from_numpy(logits[0]), dim=-1).numpy()
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


class ModelSet:
    """Every model of one service instance, loaded once.

    Args:
        classifier: Classification run directory or checkpoint.
        screening: Screening run directory, or None.
        pneumothorax: Pneumothorax run directory, or None.
        cam_method: Grad-CAM method (a key of :data:`cxrlab.explain.cam.CAM_METHODS`).
        max_pixels: Largest image decoded.
    """

    def __init__(self, classifier: str | Path, screening: str | Path | None = None,
                 pneumothorax: str | Path | None = None, cam_method: str = "gradcam",
                 max_pixels: int | None = None) -> None:
        from cxrlab.explain.cam import CAM_METHODS
        from cxrlab.io import DEFAULT_MAX_PIXELS

        if cam_method not in CAM_METHODS:
            raise ConfigError("cam_method", f"unknown CAM method {cam_method!r}; choose from {', '.join(CAM_METHODS)}")
        self.cam_method = cam_method
        self.max_pixels = max_pixels or DEFAULT_MAX_PIXELS
        self.classifier = ClassifierAdapter(classifier)
        self.screening = ScreeningAdapter(screening) if screening is not None else None
        self.pneumothorax = PneumothoraxAdapter(pneumothorax) if pneumothorax is not None else None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Any) -> ModelSet:
        """Load the models a :class:`~cxrlab.serve.settings.ServeSettings` names."""
        return cls(settings.classifier, settings.screening, settings.pneumothorax,
                   cam_method=settings.cam_method, max_pixels=settings.max_pixels)

    def versions(self) -> dict[str, dict[str, Any]]:
        """Role -> ``{kind, name, version, ...}`` of every loaded model."""
        out = {"classifier": self.classifier.info.to_dict()}
        if self.screening is not None:
            out["screening"] = self.screening.info.to_dict()
        if self.pneumothorax is not None:
            out["pneumothorax"] = self.pneumothorax.info.to_dict()
        return out

    def analyze(self, path: str | Path) -> Analysis:
        """Decode one DICOM/PNG/JPEG file and run every model on it.

        Raises:
            InputError: The file is not a readable image (subclasses say why).
        """
        from cxrlab.explain.cam import heatmap
        from cxrlab.io import read_image
        from cxrlab.io.rle import rle_encode

        image = read_image(path, max_pixels=self.max_pixels)
        pixels = image.pixels
        if pixels.ndim != 2:
            raise InputError(path, f"expected a 2-D radiograph, got pixels of shape {pixels.shape}")
        x = self.classifier.tensor(pixels)
        ptx_inputs = self.pneumothorax.inputs(pixels) if self.pneumothorax is not None else None
        screen_x = self.screening.tensor(pixels) if self.screening is not None else None
        with self._lock:
            findings = self.classifier.findings(self.classifier.probabilities(x))
            target = _cam_target(findings)
            cam = heatmap(self.classifier.model, x, target, self.cam_method, self.classifier.labels)
            screening = self.screening.predict(screen_x) if self.screening is not None else None
            ptx = (self.pneumothorax.predict(ptx_inputs[0], ptx_inputs[1], pixels.shape)
                   if self.pneumothorax is not None and ptx_inputs is not None else None)
        pneumothorax, mask_png = None, None
        if ptx is not None:
            mask, probability = ptx
            pneumothorax = {"present": bool(mask.any()), "probability": probability,
                            "area_fraction": float(mask.mean()), "rle": rle_encode(mask),
                            "width": int(mask.shape[1]), "height": int(mask.shape[0])}
            mask_png = png_bytes(mask.astype(np.uint8) * 255)
        meta = image.meta
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
