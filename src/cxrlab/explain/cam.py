"""Class activation maps of cxrlab classifiers with pytorch-grad-cam (seed 001 section 4.2).

The map is computed on the last convolutional feature map, the output of the
classifier's body (ResNet ``layer4``, DenseNet ``features.norm5``, EfficientNet
``conv_head``/``bn2``): ``h x w`` cells (5 x 5 at 160 px to 15 x 15 at 480 px for the
seed 001 bodies), min-max normalised to ``[0, 1]`` and upsampled bilinearly to the
input size, as seed 001 did for Fig 4.5.

:func:`heatmap` is the entry point for other modules: one preprocessed image tensor and a
model in, the map and a PNG overlay out; :func:`heatmaps` does the same for a batch in one
pass (the batched HTTP service).
:func:`explain_files` runs a checkpoint over image files and writes overlays and maps.

Computing a map registers hooks on the model and (for gradient methods) runs a
backward pass: do not share one model between threads while maps are computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pytorch_grad_cam import (
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from cxrlab.errors import ConfigError, InputError, SkipLog
from cxrlab.inference.classifier import ClassifierPredictor
from cxrlab.utils import atomic_write


class _QuietScoreCAM(ScoreCAM):
    """Score-CAM without the progress bar pytorch-grad-cam prints for every image."""

    batch_size = 32

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):  # noqa: D102
        with torch.no_grad():
            acts = torch.from_numpy(activations).to(self.device)
            up = F.interpolate(acts, size=input_tensor.shape[-2:], mode="bilinear", align_corners=False)
            flat = up.flatten(2)
            low, high = flat.min(-1)[0][..., None, None], flat.max(-1)[0][..., None, None]
            up = (up - low) / (high - low + 1e-8)
            weights = []
            for target, image, masks in zip(targets, input_tensor, up):
                scores = []
                for start in range(0, masks.shape[0], self.batch_size):
                    batch = image[None] * masks[start:start + self.batch_size, None]
                    scores.append(torch.stack([target(o) for o in self.model(batch)]).float())
                weights.append(torch.softmax(torch.cat(scores), dim=0))
            return torch.stack(weights).cpu().numpy()


CAM_METHODS: dict[str, type] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "hirescam": HiResCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "eigengradcam": EigenGradCAM,
    "scorecam": _QuietScoreCAM,
}
"""Method name -> pytorch-grad-cam class (``gradcam`` is seed 001's)."""


@dataclass(frozen=True)
class Heatmap:
    """One class activation map.

    Attributes:
        map: float32 ``(H, W)`` in ``[0, 1]``: the map upsampled bilinearly to the input.
        raw: float32 ``(h, w)`` in ``[0, 1]``: the map on the feature-map grid.
        feature_size: ``(h, w)`` of the last convolutional feature map.
        target: Index of the explained class (logit).
        label: Its name.
        probability: The model's sigmoid probability for that class.
        method: The CAM method.
        overlay_png: PNG bytes of the map blended over the image (empty unless asked for).
    """

    map: np.ndarray
    raw: np.ndarray
    feature_size: tuple[int, int]
    target: int
    label: str
    probability: float
    method: str
    overlay_png: bytes = b""


def target_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The layer whose output is explained: a Classifier's body, else the last Conv2d."""
    body = getattr(model, "body", None)
    if isinstance(body, torch.nn.Module):
        return body
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    if not convs:
        raise ConfigError("model", "has neither a .body nor a Conv2d layer to explain")
    return convs[-1]


def _reshape_transform(model: torch.nn.Module):
    """NHWC bodies (``output_fmt == "NHWC"``) give (B, H, W, C); CAMs need (B, C, H, W)."""
    if getattr(getattr(model, "body", None), "output_fmt", "NCHW") == "NHWC":
        return lambda t: t.permute(0, 3, 1, 2)
    return None


def class_index(target: int | str, labels: Sequence[str]) -> int:
    """The logit index of ``target`` (a class name, case-insensitive, or an index).

    Raises:
        ConfigError: No such class.
    """
    if isinstance(target, (int, np.integer)) or (isinstance(target, str) and target.isdigit()):
        index = int(target)
        if not 0 <= index < len(labels):
            raise ConfigError("--target", f"class index {index} out of range; the model has {len(labels)} classes")
        return index
    lowered = [str(name).lower() for name in labels]
    if str(target).lower() not in lowered:
        raise ConfigError("--target", f"unknown class {target!r}; the model predicts {', '.join(labels)}")
    return lowered.index(str(target).lower())


def display_image(image: torch.Tensor) -> np.ndarray:
    """A normalised ``(C, H, W)`` tensor as a uint8 ``(H, W)`` picture (channel mean, min-max)."""
    gray = image.detach().float().mean(dim=0).cpu().numpy()
    low, high = float(gray.min()), float(gray.max())
    scaled = (gray - low) / (high - low) if high > low else np.zeros_like(gray)
    return np.rint(scaled * 255.0).astype(np.uint8)


def overlay(gray: np.ndarray, cam: np.ndarray, alpha: float = 0.45,
            boxes: Sequence[tuple[float, float, float, float]] = ()) -> np.ndarray:
    """Blend a ``[0, 1]`` map (jet colours) over a uint8 gray image; draw boxes in green.

    Args:
        gray: uint8 ``(H, W)``.
        cam: float ``(H, W)`` in ``[0, 1]``.
        alpha: Weight of the map.
        boxes: ``(x0, y0, x1, y1)`` in pixels of ``gray``.

    Returns:
        uint8 RGB ``(H, W, 3)``.
    """
    if gray.shape != cam.shape:
        raise InputError(None, f"image {gray.shape} and map {cam.shape} differ in shape")
    heat = cv2.applyColorMap(np.rint(np.clip(cam, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB).astype(np.float32)
    base = np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
    out = np.rint((1.0 - alpha) * base + alpha * heat).clip(0, 255).astype(np.uint8)
    thickness = max(1, gray.shape[0] // 160)
    for x0, y0, x1, y1 in boxes:
        cv2.rectangle(out, (int(round(x0)), int(round(y0))), (int(round(x1)) - 1, int(round(y1)) - 1),
                      (0, 255, 0), thickness)
    return out


def png_bytes(rgb: np.ndarray) -> bytes:
    """PNG encoding of a uint8 RGB (or gray) array."""
    array = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    ok, buffer = cv2.imencode(".png", array)
    if not ok:
        raise InputError(None, "PNG encoding failed")
    return buffer.tobytes()


def compute_cam(model: torch.nn.Module, image: torch.Tensor, target: int = 0,
                method: str = "gradcam") -> tuple[np.ndarray, np.ndarray, float]:
    """The ``(raw, upsampled, probability)`` CAM of one ``(C, H, W)`` image for logit ``target``.

    Raises:
        ConfigError: Unknown method.
        InputError: The image is not a ``(C, H, W)`` tensor.
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        raise InputError(None, f"expected one (C, H, W) image tensor, got {getattr(image, 'shape', type(image))}")
    return compute_cams(model, image[None], [target], method)[0]


def compute_cams(model: torch.nn.Module, images: torch.Tensor, targets: Sequence[int],
                 method: str = "gradcam") -> list[tuple[np.ndarray, np.ndarray, float]]:
    """:func:`compute_cam` of a ``(N, C, H, W)`` batch, one target logit per image, in one
    forward (and backward) pass. Each map is normalised on its own; the model must be in
    eval mode for the maps to equal the one-image ones (batch norm).

    Raises:
        ConfigError: Unknown method.
        InputError: Not a ``(N, C, H, W)`` tensor, or not one target per image.
    """
    if method not in CAM_METHODS:
        raise ConfigError("--method", f"unknown CAM method {method!r}; choose from {', '.join(CAM_METHODS)}")
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or len(images) != len(targets):
        raise InputError(None, f"expected a (N, C, H, W) batch and N targets, got "
                               f"{getattr(images, 'shape', type(images))} and {len(targets)} targets")
    device = next(model.parameters()).device
    batch = images.to(device=device, dtype=torch.float32).requires_grad_(True)
    cam = CAM_METHODS[method](model=model, target_layers=[target_layer(model)],
                              reshape_transform=_reshape_transform(model))
    # Return the map on the feature grid; the bilinear upsampling is done below.
    cam.get_target_width_height = lambda tensor: None
    try:
        with torch.enable_grad():
            raws = cam(input_tensor=batch, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        probabilities = torch.sigmoid(cam.outputs[torch.arange(len(targets)), list(map(int, targets))]
                                      .detach().float()).tolist()
    finally:
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)
    raws = np.nan_to_num(np.asarray(raws, dtype=np.float32))
    ups = F.interpolate(torch.from_numpy(raws)[:, None], size=tuple(images.shape[-2:]), mode="bilinear",
                        align_corners=False)[:, 0].clamp_(0.0, 1.0).numpy()
    return [(raw, up, float(p)) for raw, up, p in zip(raws, ups, probabilities)]


def heatmap(model: torch.nn.Module, image: torch.Tensor, target: int | str = 0, method: str = "gradcam",
            labels: Sequence[str] | None = None, display: np.ndarray | None = None, alpha: float = 0.45,
            boxes: Sequence[tuple[float, float, float, float]] = (), with_png: bool = True) -> Heatmap:
    """The CAM of one preprocessed image for one class, with a PNG overlay.

    Args:
        model: A classifier (``cxrlab.models.Classifier`` or any CNN), any mode.
        image: ``(C, H, W)`` tensor, preprocessed and normalised as the model expects.
        target: Class name (needs ``labels``) or logit index.
        method: A key of :data:`CAM_METHODS`.
        labels: Class names of the logits (a checkpoint's ``meta["labels"]``).
        display: uint8 ``(H, W)`` picture under the overlay (default: from ``image``).
        alpha: Weight of the map in the overlay.
        boxes: Boxes ``(x0, y0, x1, y1)`` drawn on the overlay (input pixels).
        with_png: Encode the overlay (False leaves ``overlay_png`` empty).
    """
    labels = list(labels) if labels is not None else [str(i) for i in range(_num_outputs(model))]
    index = class_index(target, labels)
    return _heatmap(image, index, labels[index], method, *compute_cam(model, image, index, method),
                    display=display, alpha=alpha, boxes=boxes, with_png=with_png)


def heatmaps(model: torch.nn.Module, images: Sequence[torch.Tensor], targets: Sequence[int | str],
             method: str = "gradcam", labels: Sequence[str] | None = None) -> list[Heatmap]:
    """:func:`heatmap` (with the PNG overlay) of several images in one batched CAM pass
    (:func:`compute_cams`); the model must be in eval mode."""
    labels = list(labels) if labels is not None else [str(i) for i in range(_num_outputs(model))]
    indices = [class_index(target, labels) for target in targets]
    maps = compute_cams(model, torch.stack(list(images)), indices, method)
    return [_heatmap(image, index, labels[index], method, *parts)
            for image, index, parts in zip(images, indices, maps)]


def _heatmap(image: torch.Tensor, index: int, label: str, method: str, raw: np.ndarray, up: np.ndarray,
             probability: float, display: np.ndarray | None = None, alpha: float = 0.45,
             boxes: Sequence[tuple[float, float, float, float]] = (), with_png: bool = True) -> Heatmap:
    png = b""
    if with_png:
        picture = display if display is not None else display_image(image)
        png = png_bytes(overlay(picture, up, alpha=alpha, boxes=boxes))
    return Heatmap(map=up, raw=raw, feature_size=(int(raw.shape[0]), int(raw.shape[1])), target=index,
                   label=label, probability=probability, method=method, overlay_png=png)


def _num_outputs(model: torch.nn.Module) -> int:
    return int(getattr(model, "num_classes", 1))


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def explain_files(checkpoint: str | Path, paths: Sequence[str | Path], out_dir: str | Path,
                  method: str = "gradcam", targets: Sequence[str] | None = None, alpha: float = 0.45,
                  on_error: str = "raise", skips: SkipLog | None = None) -> pd.DataFrame:
    """Write overlays and maps of every image and class; returns the manifest table.

    For image ``STEM`` and class ``C`` it writes ``OUT/STEM__C__METHOD.png`` (overlay),
    ``...npy`` (the upsampled map, float32 at the model's input size) and ``..._raw.npy``
    (the feature-grid map), and ``OUT/explanations.csv`` with one row per image and class:
    ``image, label, probability, method, feature_h, feature_w, overlay, map, raw``.

    Args:
        checkpoint: A ``.pt`` checkpoint or a run directory.
        paths: Image files (DICOM, PNG, JPEG).
        out_dir: Output folder.
        method: CAM method.
        targets: Class names or indices; default: every class of the checkpoint.
        alpha: Overlay weight.
        on_error: ``raise`` or ``skip`` unreadable images (recorded in ``skips``).
        skips: Collects skipped images.
    """
    predictor = ClassifierPredictor.from_run_dir(checkpoint)
    model, labels = predictor.model, predictor.labels
    indices = [class_index(t, labels) for t in targets] if targets else list(range(len(labels)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    skips = skips if skips is not None else SkipLog(on_error)
    rows: list[dict[str, Any]] = []
    for path in paths:
        try:
            tensor = predictor.tensor_from_path(path)
        except InputError as err:
            skips.handle(err)
            continue
        picture = display_image(tensor)
        for index in indices:
            result = heatmap(model, tensor, index, method, labels, display=picture, alpha=alpha)
            stem = f"{Path(path).stem}__{_slug(labels[index])}__{_slug(method.replace('+', 'p'))}"
            atomic_write(out / f"{stem}.png", lambda tmp, data=result.overlay_png: tmp.write_bytes(data))
            atomic_write(out / f"{stem}.npy", lambda tmp, a=result.map: _save_npy(tmp, a))
            atomic_write(out / f"{stem}_raw.npy", lambda tmp, a=result.raw: _save_npy(tmp, a))
            rows.append({"image": str(path), "label": labels[index], "probability": result.probability,
                         "method": method, "feature_h": result.feature_size[0],
                         "feature_w": result.feature_size[1], "overlay": f"{stem}.png",
                         "map": f"{stem}.npy", "raw": f"{stem}_raw.npy"})
    table = pd.DataFrame(rows, columns=["image", "label", "probability", "method", "feature_h", "feature_w",
                                        "overlay", "map", "raw"])
    atomic_write(out / "explanations.csv", lambda tmp: table.to_csv(tmp, index=False))
    return table


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array)
