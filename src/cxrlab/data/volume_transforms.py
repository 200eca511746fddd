"""Preparing series of slices for a 2-D network: histogram standardization, resizing, channels, augmentation.

Histogram standardization (Nyúl & Udupa 2000, as MRNet's poster describes it): for every
training volume the intensities at the percentiles ``1, 10, 20, 25, 30, 40, 50, 60, 70, 75,
80, 90, 99`` are mapped linearly so the 1st and 99th percentiles land on 0 and 100 (TorchIO's
standard range), and the mapped landmarks are averaged over the training set
(:func:`learn_landmarks`; the same computation as ``torchio.HistogramStandardization.train``,
which only reads image files). :func:`standardize` applies them with TorchIO's
``HistogramStandardization`` transform: a piecewise-linear map from a volume's own
percentiles to the landmarks. Landmarks are learnt per plane (each plane is its own MR
sequence) and stored with the model.

Then each slice is resized to ``size x size`` (bilinear), scaled by 1/100 (the standard
range to about [0, 1]), repeated to three channels and normalized with ImageNet's mean and
standard deviation (``normalization="imagenet"``) or left in [0, 1] (``"unit"``).

Augmentation (MRNet: random rotation up to 25°, shift up to 25 px at 256 px, horizontal
flip with probability 0.5) moves every slice of a series the same way, drawn from a
``torch.Generator`` the caller seeds.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from cxrlab.errors import ConfigError, VolumeError

PERCENTILES = np.array([1, 10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90, 99], dtype=np.float64)
STANDARD_RANGE = (0.0, 100.0)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = ("imagenet", "unit")


def volume_percentiles(array: np.ndarray) -> np.ndarray:
    """The 13 landmark percentiles of one volume."""
    return np.percentile(np.asarray(array, dtype=np.float32), PERCENTILES)


def learn_landmarks(volumes: Iterable[np.ndarray]) -> np.ndarray:
    """Average histogram landmarks of training volumes (module docstring).

    Raises:
        VolumeError: No volumes.
    """
    database = np.array([volume_percentiles(v) for v in volumes])
    if database.size == 0:
        raise VolumeError(None, "no training volumes to learn histogram landmarks from")
    low, high = STANDARD_RANGE
    spread = database[:, -1] - database[:, 0]
    slopes = np.divide(high - low, spread, out=np.zeros_like(spread), where=spread > 0)
    intercept = np.mean(low - slopes * database[:, 0])
    return slopes.dot(database) / len(database) + intercept


def standardize(array: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Map a volume ``(S, H, W)`` onto the landmarks with TorchIO's HistogramStandardization.

    Returns:
        float32 ``(S, H, W)`` on the standard scale (about 0..100).
    """
    import torchio as tio

    tensor = torch.as_tensor(np.asarray(array, dtype=np.float32))[None]          # (1, S, H, W)
    subject = tio.Subject(image=tio.ScalarImage(tensor=tensor))
    transform = tio.HistogramStandardization({"image": np.asarray(landmarks, dtype=np.float64)})
    return transform(subject)["image"].data[0].numpy().astype(np.float32, copy=False)


def to_slices(array: np.ndarray, size: int, normalization: str = "imagenet", scale: float = 100.0) -> torch.Tensor:
    """``(S, H, W)`` standardized values -> ``(S, 3, size, size)`` network input.

    Raises:
        ConfigError: Unknown normalization.
    """
    if normalization not in NORMALIZATIONS:
        raise ConfigError("data.normalization", f"unknown normalization {normalization!r}; choose from "
                                                f"{NORMALIZATIONS}")
    x = torch.as_tensor(np.asarray(array, dtype=np.float32))[:, None] / scale
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.expand(-1, 3, -1, -1)
    if normalization == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        x = (x - mean) / std
    return x.contiguous()


def augment_series(x: torch.Tensor, generator: torch.Generator, rotation: float = 25.0,
                   shift: float = 25.0 / 256.0, flip: float = 0.5) -> torch.Tensor:
    """Rotate (up to ``rotation`` degrees), shift (up to ``shift`` of the side) and flip
    horizontally (probability ``flip``) all slices of ``x`` ``(S, C, H, W)`` alike."""
    angle = float((torch.rand((), generator=generator) * 2 - 1) * rotation) * np.pi / 180.0
    tx, ty = ((torch.rand(2, generator=generator) * 2 - 1) * shift * 2).tolist()   # affine_grid: side = 2
    mirror = -1.0 if float(torch.rand((), generator=generator)) < flip else 1.0
    cos, sin = np.cos(angle), np.sin(angle)
    theta = torch.tensor([[cos * mirror, -sin, tx], [sin * mirror, cos, ty]], dtype=x.dtype)
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    background = x.amin(dim=(1, 2, 3), keepdim=True)
    return F.grid_sample(x - background, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False) + background
