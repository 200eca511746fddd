"""Pneumothorax prediction: U-Net masks with the run's tuned post-processing, gated by the
classifier in the cascade, mapped back onto the source image; mask/RLE export."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from cxrlab.config.pneumothorax import MODELS
from cxrlab.data.transforms import PreprocessConfig, minmax_scale, preprocess, to_tensor
from cxrlab.errors import ConfigError, MissingFileError
from cxrlab.inference.backends import OnnxBackend, TorchBackend, open_backend
from cxrlab.inference.base import ModelInfo, file_version, input_shape
from cxrlab.inference.classifier import ClassifierPredictor
from cxrlab.inference.postprocess import Postprocess, hflip_tta, restore_mask
from cxrlab.io import read_image, write_png
from cxrlab.io.rle import rle_encode
from cxrlab.io.write import write_bytes_atomic
from cxrlab.models.segmentation import (
    foreground_probability,
    load_segmentation_checkpoint,
)
from cxrlab.utils import atomic_write_text

log = logging.getLogger(__name__)


GATE_CHECKPOINTS = {"auroc": "best_auroc.pt", "loss": "best_loss.pt"}
"""The gate recipe's ``train.monitor`` -> the classification run's checkpoint the cascade uses."""


def gate_checkpoint(run_dir: str | Path) -> Path:
    """The gate checkpoint of a pneumothorax run, picked by the gate recipe's ``train.monitor``.

    ``auroc`` (default, seed 002) -> ``gate/best_auroc.pt``; ``loss`` -> ``gate/best_loss.pt``.
    On a small validation fold the gate's AUROC saturates at 1.0 within a few epochs, so
    the first epoch to reach it would be kept; the validation loss keeps ranking them.

    Raises:
        MissingFileError: The run has no trained gate.
    """
    gate_dir = Path(run_dir) / "gate"
    config = gate_dir / "config.yaml"
    monitor = "auroc"
    if config.is_file():
        raw = yaml.safe_load(config.read_text()) or {}
        monitor = str((raw.get("train") or {}).get("monitor", "auroc"))
    path = gate_dir / GATE_CHECKPOINTS.get(monitor, GATE_CHECKPOINTS["auroc"])
    if not path.is_file():
        raise MissingFileError(path, "the run has no gate checkpoint; did the gate's training finish?")
    return path


@dataclass
class MaskPrediction:
    """One predicted image: its mask in source orientation and size, and the gate's say."""

    path: str
    image_id: str
    mask: np.ndarray
    pixels: np.ndarray
    gate_probability: float | None


def choose_postprocess(run_dir: Path, model: str, row: str | None = None) -> tuple[str, Postprocess]:
    """The tuned post-processing of ``model`` (``row``, or the best validation score)."""
    path = Path(run_dir) / "postprocess.json"
    if not path.is_file():
        raise MissingFileError(path, "no tuned post-processing; run `cxrlab seg evaluate` first")
    tuned = json.loads(path.read_text()).get(model)
    if not tuned:
        raise ConfigError("--model", f"run {run_dir} has no {model!r} model; it has "
                                     f"{sorted(json.loads(path.read_text()))}")
    if row is None:
        row = max(tuned, key=lambda r: tuned[r]["valid_score"])
    if row not in tuned:
        raise ConfigError("--postprocess", f"row {row!r} was not tuned; choose from {sorted(tuned)}")
    values = {k: v for k, v in tuned[row].items() if k != "valid_score"}
    return row, Postprocess.from_dict(values)


class UNetPredictor:
    """A U-Net checkpoint with its preprocessing: foreground probabilities, plain or flip-TTA.

    The pneumothorax evaluation (before any post-processing is tuned) and
    :class:`PneumothoraxPredictor` both run the U-Net through it, with PyTorch (default)
    or the checkpoint's ONNX export as the backend.
    """

    def __init__(self, unet: torch.nn.Module, meta: dict[str, Any],
                 backend: TorchBackend | OnnxBackend | None = None) -> None:
        self.unet = unet.eval()
        self.meta = meta
        self.preprocessing = PreprocessConfig.from_dict(meta["preprocessing"])
        self.backend = backend if backend is not None else TorchBackend(self.unet)

    @classmethod
    def from_checkpoint(cls, path: str | Path, backend: str = "torch", providers: list[str] | None = None,
                        threads: int | None = None) -> UNetPredictor:
        """Load a U-Net checkpoint (``baseline/best.pt``, ``one_case/best.pt``).

        ``backend``: ``torch``, ``onnx`` or ``onnx-int8`` (see
        :func:`cxrlab.inference.backends.open_backend`).
        """
        unet, meta = load_segmentation_checkpoint(path)
        predictor = cls(unet, meta)
        if backend != "torch":
            predictor.backend = open_backend(backend, predictor.unet, path, {"model_version": file_version([Path(path)])},
                                             predictor.input_shape(), providers=providers, threads=threads)
        return predictor

    def input_shape(self) -> tuple[int, int, int]:
        """``(C, S, S)`` of the U-Net's input."""
        return input_shape(self.tensor)

    def tensor(self, pixels: np.ndarray) -> torch.Tensor:
        """The U-Net's ``(C, S, S)`` input for decoded pixels."""
        return to_tensor(preprocess(pixels, self.preprocessing), channels=int(self.meta["in_chans"]),
                         normalization=self.meta["normalization"])

    @torch.no_grad()
    def probabilities(self, batch: torch.Tensor, tta: bool = False,
                      plain: torch.Tensor | None = None) -> torch.Tensor:
        """Foreground probabilities ``(N, 1, S, S)``; with ``tta`` averaged with the flipped
        image's (``plain``: the un-flipped result when already computed)."""

        def probability(images: torch.Tensor) -> torch.Tensor:
            return foreground_probability(torch.from_numpy(self.backend(images)))

        return hflip_tta(probability, batch, plain=plain) if tta else probability(batch)


class PneumothoraxPredictor:
    """A pneumothorax run, loaded once: U-Net, tuned post-processing and (cascade) the gate.

    Each image is preprocessed as the U-Net's training data was, predicted (with flip TTA
    when the post-processing asks for it), post-processed, gated (cascade: the gate
    classifier's decision empties the mask of a negative image) and mapped back onto the
    source image (padding removed, source size).

    Args:
        unet: The U-Net (eval mode). meta: Its checkpoint metadata.
        post: The tuned post-processing; row: its Table 5.1 row name.
        model: ``baseline`` or ``cascade``. gate: The gate predictor (cascade only).
        info: What responses say about the model.
    """

    def __init__(self, unet: torch.nn.Module | UNetPredictor, meta: dict[str, Any], post: Postprocess, row: str,
                 model: str, gate: ClassifierPredictor | None, info: ModelInfo) -> None:
        self.segmenter = unet if isinstance(unet, UNetPredictor) else UNetPredictor(unet, meta)
        self.unet = self.segmenter.unet
        self.meta = meta
        self.post = post
        self.row = row
        self.model_name = model
        self.gate = gate
        self.info = info
        self.preprocessing = PreprocessConfig.from_dict(meta["preprocessing"])
        if gate is not None and "Pneumothorax" not in gate.labels:
            raise ConfigError(gate.info.files[0] if gate.info.files else "gate",
                              f"the gate predicts {gate.labels}, not Pneumothorax")

    @classmethod
    def from_run_dir(cls, run_dir: str | Path, model: str | None = None, row: str | None = None,
                     backend: str = "torch", providers: list[str] | None = None,
                     threads: int | None = None) -> PneumothoraxPredictor:
        """Load a pneumothorax run directory.

        Args:
            run_dir: The run (``cxrlab seg train``), evaluated (``postprocess.json``).
            model: ``cascade`` or ``baseline``; None = the cascade when the run has a gate
                and a tuned cascade, else the baseline.
            row: The post-processing row; None = the best on validation.
            backend: ``torch``, ``onnx`` or ``onnx-int8`` for the U-Net and the gate (the
                files ``cxrlab export RUN_DIR`` wrote).
            providers: ONNX Runtime execution providers. threads: Its intra-op threads.

        Raises:
            MissingFileError: No such run, checkpoint, tuned post-processing or ONNX export.
            ConfigError: Unknown model or row. OnnxModelError: An ONNX file from another model.
        """
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise MissingFileError(run_dir, "pneumothorax run directory not found")
        if model is not None and model not in MODELS:
            raise ConfigError("--model", f"unknown model {model!r}; choose from {MODELS}")
        if model is None:
            try:
                gate_path: Path | None = gate_checkpoint(run_dir)
            except MissingFileError:
                gate_path = None
            model = "cascade" if gate_path is not None and gate_path.is_file() else "baseline"
            try:
                chosen, post = choose_postprocess(run_dir, model, row)
            except ConfigError:
                if model != "cascade":
                    raise
                model = "baseline"
                chosen, post = choose_postprocess(run_dir, model, row)
        else:
            chosen, post = choose_postprocess(run_dir, model, row)
        unet_path = run_dir / ("baseline" if model == "baseline" else "one_case") / "best.pt"
        segmenter = UNetPredictor.from_checkpoint(unet_path, backend=backend, providers=providers, threads=threads)
        gate = (ClassifierPredictor.from_run_dir(gate_checkpoint(run_dir), kind="pneumothorax-gate", backend=backend,
                                                 providers=providers, threads=threads)
                if model == "cascade" else None)
        files = [unet_path] + ([Path(gate.info.files[0])] if gate is not None else [])
        meta = segmenter.meta
        info = ModelInfo(kind="pneumothorax", name=run_dir.name, version=file_version(files),
                         files=tuple(map(str, files)),
                         details={"model": model, "postprocess": chosen, "encoder": meta.get("encoder"),
                                  "backend": backend})
        return cls(segmenter, meta, post, chosen, model, gate, info)

    def tensor(self, pixels: np.ndarray) -> torch.Tensor:
        """The U-Net's ``(C, S, S)`` input for decoded pixels."""
        return self.segmenter.tensor(pixels)

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Foreground probabilities ``(N, 1, S, S)`` of a batch, with flip TTA when tuned so."""
        return self.segmenter.probabilities(batch, tta=self.post.tta)

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, float, float | None]]:
        """``(mask, probability, gate probability)`` per decoded image.

        ``mask`` is boolean at the source size; ``probability`` is the gate's probability of
        pneumothorax (cascade) or the U-Net's highest pixel probability (baseline).
        """
        probs = self.probabilities(torch.stack([self.tensor(pixels) for pixels in images]))
        gate = None
        if self.gate is not None:
            column = self.gate.labels.index("Pneumothorax")
            gate = self.gate.probabilities(torch.stack([self.gate.tensor(pixels) for pixels in images]))[:, column]
        masks = self.post.masks(probs[:, 0].numpy(), gate)
        out = []
        for j, pixels in enumerate(images):
            mask = restore_mask(masks[j], pixels.shape, self.preprocessing.pad_square)
            p = float(gate[j]) if gate is not None else float(probs[j].max())
            out.append((mask, p, None if gate is None else float(gate[j])))
        return out

    def predict(self, pixels: np.ndarray) -> tuple[np.ndarray, float]:
        """``(mask, probability)`` of one decoded image (see :meth:`predict_batch`)."""
        mask, probability, _ = self.predict_batch([pixels])[0]
        return mask, probability


def predict_masks(run_dir: str | Path, paths: Sequence[str | Path], model: str = "cascade",
                  row: str | None = None, batch_size: int = 8, backend: str = "torch",
                  providers: list[str] | None = None) -> list[MaskPrediction]:
    """Masks for images (DICOM/PNG/JPEG) with a run's model and tuned post-processing
    (:class:`PneumothoraxPredictor`, batches of ``batch_size``, networks run by ``backend``)."""
    predictor = PneumothoraxPredictor.from_run_dir(run_dir, model=model, row=row, backend=backend,
                                                   providers=providers)
    out: list[MaskPrediction] = []
    for start in range(0, len(paths), batch_size):
        chunk = [read_image(p) for p in paths[start:start + batch_size]]
        for j, (img, (mask, _, gate)) in enumerate(zip(chunk, predictor.predict_batch([c.pixels for c in chunk]))):
            path = str(paths[start + j])
            out.append(MaskPrediction(path=path, image_id=img.meta.sop_instance_uid or Path(path).stem,
                                      mask=mask, pixels=img.pixels, gate_probability=gate))
    return out


def write_rle_csv(path: str | Path, rows: Sequence[tuple[str, str]]) -> Path:
    """Kaggle SIIM CSV (``ImageId,EncodedPixels``, one row per region, ``-1`` = empty), atomically."""
    lines = ["ImageId,EncodedPixels"] + [f"{image_id},{rle}" for image_id, rle in rows]
    return atomic_write_text(path, "\n".join(lines) + "\n")


def export_predictions(predictions: Sequence[MaskPrediction], out: str | Path, rle: bool = False) -> dict[str, Path]:
    """Write ``masks/<stem>.png`` (0/255), ``overlays/<stem>.png`` (mask in red),
    ``predictions.csv`` and, with ``rle``, the Kaggle ``submission.csv``."""
    import cv2
    import pandas as pd


    out = Path(out)
    records = []
    for pred in predictions:
        stem = Path(pred.path).stem
        write_png(out / "masks" / f"{stem}.png", pred.mask)
        gray = np.rint(minmax_scale(pred.pixels) * 255).astype(np.uint8)
        overlay = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
        overlay[pred.mask] = (0.5 * overlay[pred.mask] + np.array([0, 0, 127])).astype(np.uint8)
        ok, encoded = cv2.imencode(".png", overlay)
        if ok:
            write_bytes_atomic(out / "overlays" / f"{stem}.png", encoded.tobytes())
        records.append({"path": pred.path, "image_id": pred.image_id, "gate_probability": pred.gate_probability,
                        "mask_pixels": int(pred.mask.sum()), "has_mask": bool(pred.mask.any())})
    files = {"masks": out / "masks", "overlays": out / "overlays", "predictions": out / "predictions.csv"}
    atomic_write_text(files["predictions"], pd.DataFrame.from_records(records).to_csv(index=False))
    if rle:
        files["rle"] = write_rle_csv(out / "submission.csv", [(p.image_id, rle_encode(p.mask)) for p in predictions])
    return files
