"""Classifier prediction: one loaded checkpoint, many images."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxrlab.data.transforms import PreprocessConfig, preprocess, to_tensor
from cxrlab.errors import ConfigError, InputError, MissingFileError, SkipLog
from cxrlab.inference.backends import OnnxBackend, TorchBackend, open_backend
from cxrlab.inference.base import ModelInfo, file_version, input_shape, iter_image_paths
from cxrlab.io import read_image
from cxrlab.models.weights import load_model_checkpoint

log = logging.getLogger(__name__)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory's ``best_auroc.pt``."""
    path = Path(path)
    if path.is_dir():
        path = path / "best_auroc.pt"
    if not path.is_file():
        raise MissingFileError(path, "checkpoint not found (give a .pt file or a run directory)")
    return path


class ClassifierPredictor:
    """A trained classifier, loaded once: preprocessing, probabilities, decisions, CAM model.

    ``from_run_dir`` reads a checkpoint (or a run directory's ``best_auroc.pt``) and its
    metadata (labels, input size, preprocessing, normalization, thresholds); ``predict``
    then maps decoded pixels to per-label probabilities many times. Training's evaluation,
    ``cxrlab predict``, explain, the pneumothorax gate and the service all go through it.

    The network runs through a backend (:mod:`cxrlab.inference.backends`): PyTorch eager
    by default, or the run's exported ONNX file; ``model`` stays the PyTorch module either
    way (Grad-CAM needs its gradients, so explanations always run in PyTorch).

    Args:
        model: The network (put in eval mode).
        meta: The checkpoint's metadata.
        info: What responses say about the model.
        backend: What computes the logits (default: ``TorchBackend(model)``).
    """

    def __init__(self, model: torch.nn.Module, meta: dict[str, Any], info: ModelInfo | None = None,
                 backend: TorchBackend | OnnxBackend | None = None) -> None:
        self.model = model.eval()
        self.backend = backend if backend is not None else TorchBackend(self.model)
        self.meta = meta
        self.labels: list[str] = [str(label) for label in meta.get("labels") or []]
        if not self.labels or len(self.labels) != int(meta.get("num_classes", len(self.labels))):
            raise ConfigError(info.files[0] if info else "checkpoint",
                              "the checkpoint's metadata lists no labels for its outputs")
        stored = meta.get("thresholds") or {}
        self.thresholds = {label: float(stored.get(label, 0.5)) for label in self.labels}
        self.preprocessing = PreprocessConfig.from_dict(meta["preprocessing"])
        self.info = info or ModelInfo(kind="classifier", name=str(meta.get("run_name", "")), version="", files=())

    @classmethod
    def from_run_dir(cls, path: str | Path, kind: str = "classifier", backend: str = "torch",
                     providers: list[str] | None = None, onnx_path: str | Path | None = None,
                     threads: int | None = None) -> ClassifierPredictor:
        """Load a ``.pt`` checkpoint or a classification run directory.

        Args:
            path: The checkpoint, or a run directory (its ``best_auroc.pt``).
            kind: What :class:`ModelInfo` calls it.
            backend: ``torch``, ``onnx`` or ``onnx-int8`` (the file ``cxrlab export`` wrote
                next to the checkpoint, or ``onnx_path``).
            providers: ONNX Runtime execution providers (e.g. ``["CUDAExecutionProvider"]``).
            threads: ONNX Runtime intra-op threads.

        Raises:
            MissingFileError: No such checkpoint, or no ONNX export. ConfigError: Metadata
                without labels. OnnxModelError: The ONNX file is corrupt or from another model.
        """
        checkpoint = resolve_checkpoint(path)
        model, meta = load_model_checkpoint(checkpoint)
        name = meta.get("run_name") or (Path(path).name if Path(path).is_dir() else checkpoint.stem)
        version = file_version([checkpoint])
        labels = [str(x) for x in meta.get("labels") or []]
        info = ModelInfo(kind=kind, name=str(name), version=version, files=(str(checkpoint),),
                         details={"arch": meta.get("arch"), "labels": labels,
                                  "input_size": meta.get("input_size"), "backend": backend})
        predictor = cls(model, meta, info)
        if backend != "torch":
            predictor.backend = open_backend(backend, predictor.model, checkpoint,
                                             {"model_version": version, "labels": labels},
                                             predictor.input_shape(), providers=providers,
                                             onnx_path=onnx_path, threads=threads)
        return predictor

    def input_shape(self) -> tuple[int, int, int]:
        """``(C, S, S)`` of the network's input."""
        return input_shape(self.tensor)

    def tensor(self, pixels: np.ndarray) -> torch.Tensor:
        """The ``(C, S, S)`` model input for decoded pixels, preprocessed as in training."""
        return to_tensor(preprocess(pixels, self.preprocessing), channels=int(self.meta["in_chans"]),
                         normalization=self.meta["normalization"])

    def tensor_from_path(self, path: str | Path) -> torch.Tensor:
        """Read one image (DICOM/PNG/JPEG) and preprocess it (:meth:`tensor`)."""
        return self.tensor(read_image(path).pixels)

    def probabilities(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
        """Sigmoid probabilities ``[N, K]`` of a ``(N, C, S, S)`` batch of model inputs."""
        return torch.sigmoid(torch.from_numpy(self.backend(batch))).numpy()

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities ``[K]`` of one decoded image."""
        return self.probabilities(self.tensor(pixels)[None])[0]

    def findings(self, probs: np.ndarray) -> list[dict[str, Any]]:
        """One dict per label: probability, threshold and the decision at it."""
        return [{"label": label, "probability": float(p), "threshold": self.thresholds[label],
                 "positive": bool(p >= self.thresholds[label])} for label, p in zip(self.labels, probs)]

    def predict_paths(self, paths: Sequence[str | Path], batch_size: int = 8,
                      skips: SkipLog | None = None) -> pd.DataFrame:
        """Per-image probabilities and decisions at the stored thresholds.

        Returns:
            One row per readable image: ``path``, ``prob_<label>`` and ``pred_<label>``;
            unreadable images are handled by ``skips`` (raise by default, or counted).
        """
        skips = skips if skips is not None else SkipLog("raise")
        rows: list[dict[str, Any]] = []
        kept: list[str] = []
        tensors: list[torch.Tensor] = []

        def flush() -> None:
            if not tensors:
                return
            for path, p in zip(kept, self.probabilities(torch.stack(tensors))):
                row: dict[str, Any] = {"path": path}
                for k, name in enumerate(self.labels):
                    row[f"prob_{name}"] = float(p[k])
                    row[f"pred_{name}"] = int(p[k] >= self.thresholds[name])
                rows.append(row)
            kept.clear()
            tensors.clear()

        for path in paths:
            try:
                tensors.append(self.tensor_from_path(path))
                kept.append(str(path))
            except InputError as err:
                skips.handle(err)
            if len(tensors) >= batch_size:
                flush()
        flush()
        columns = ["path"] + [f"{kind}_{n}" for n in self.labels for kind in ("prob", "pred")]
        return pd.DataFrame(rows, columns=columns)


def predict_images(checkpoint: str | Path, paths: Sequence[str | Path], batch_size: int = 8,
                   on_error: str = "raise", skips: SkipLog | None = None, backend: str = "torch",
                   providers: list[str] | None = None) -> pd.DataFrame:
    """:meth:`ClassifierPredictor.predict_paths` of a checkpoint or run directory."""
    return ClassifierPredictor.from_run_dir(checkpoint, backend=backend, providers=providers).predict_paths(
        paths, batch_size=batch_size, skips=skips if skips is not None else SkipLog(on_error))


__all__ = ["ClassifierPredictor", "iter_image_paths", "predict_images", "resolve_checkpoint"]
