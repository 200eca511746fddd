"""Deterministic preprocessing of radiographs (what the resolution cache stores) and tensors.

:func:`preprocess` runs, in order:

1. :func:`percentile_clip` at ``cfg.clip_percentiles`` (default 0.5 / 99.5), which
   removes burned-in labels, collimator edges and dead pixels from the intensity range;
2. :func:`minmax_scale` to [0, 1];
3. :func:`pad_to_square` with zeros (black = air), image centred, when ``cfg.pad_square``;
   otherwise the next step stretches a non-square image to a square;
4. :func:`resize_image` to ``cfg.size`` with Lanczos (:func:`resize_mask`: nearest);
5. conversion to uint8 (rounded), then :func:`equalize` (global histogram
   equalization) or :func:`apply_clahe` when the config asks for it. Both work on the
   final uint8 image, so the CLAHE tiles cover the same fraction of every image.

Geometric steps (3, 4) are applied identically to a mask. Everything is numpy/OpenCV
and runs once per image when the cache is built; :func:`to_tensor` is the per-sample
step that turns a cached uint8 image into a normalized float tensor.
"""

from __future__ import annotations

import functools

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from cxrlab.errors import ConfigError, ImageTooLargeError, InputError
from cxrlab.io.limits import DEFAULT_MAX_PIXELS, check_geometry

NORMALIZATIONS = ("imagenet", "xrv", "unit")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
XRV_MAX = 1024.0


@dataclass(frozen=True)
class PreprocessConfig:
    """How raw pixels become the square uint8 images the cache stores.

    Attributes:
        size: Output side length in pixels (at least 8).
        clip_percentiles: ``(low, high)`` percentiles to clip to before scaling, with
            ``0 <= low < high <= 100``; ``None`` scales the full range.
        pad_square: Zero-pad to a centred square before resizing (keeps the aspect ratio).
        clahe: Apply CLAHE to the resized uint8 image.
        clahe_clip_limit: CLAHE contrast limit (OpenCV ``clipLimit``), > 0.
        clahe_tile_grid: CLAHE tiles per side (OpenCV ``tileGridSize``), >= 1.
        equalize: Global histogram equalization instead (seed 003 ablation); cannot be
            combined with ``clahe``.

    Raises:
        ConfigError: A value is out of range or of the wrong type.
    """

    size: int = 320
    clip_percentiles: tuple[float, float] | None = (0.5, 99.5)
    pad_square: bool = True
    clahe: bool = False
    clahe_clip_limit: float = 2.0
    clahe_tile_grid: int = 8
    equalize: bool = False

    def __post_init__(self) -> None:
        source = "PreprocessConfig"
        if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)) \
                or self.size < 8:
            raise ConfigError(source, f"size must be an integer >= 8, got {self.size!r}")
        object.__setattr__(self, "size", int(self.size))
        if self.clip_percentiles is not None:
            object.__setattr__(self, "clip_percentiles", _percentiles(self.clip_percentiles))
        for name in ("pad_square", "clahe", "equalize"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ConfigError(source, f"{name} must be true or false, got "
                                          f"{getattr(self, name)!r}")
            object.__setattr__(self, name, bool(getattr(self, name)))
        if not _is_number(self.clahe_clip_limit) or not self.clahe_clip_limit > 0:
            raise ConfigError(source, f"clahe_clip_limit must be a number > 0, got "
                                      f"{self.clahe_clip_limit!r}")
        object.__setattr__(self, "clahe_clip_limit", float(self.clahe_clip_limit))
        if isinstance(self.clahe_tile_grid, bool) \
                or not isinstance(self.clahe_tile_grid, (int, np.integer)) \
                or self.clahe_tile_grid < 1:
            raise ConfigError(source, f"clahe_tile_grid must be an integer >= 1, got "
                                      f"{self.clahe_tile_grid!r}")
        object.__setattr__(self, "clahe_tile_grid", int(self.clahe_tile_grid))
        if self.clahe and self.equalize:
            raise ConfigError(source, "clahe and equalize are alternatives; set only one")

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-friendly values (``clip_percentiles`` as a list or ``None``)."""
        values = asdict(self)
        if self.clip_percentiles is not None:
            values["clip_percentiles"] = list(self.clip_percentiles)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PreprocessConfig:
        """Build from :meth:`to_dict` output or a YAML mapping; unknown keys raise ConfigError."""
        if not isinstance(values, dict):
            raise ConfigError("PreprocessConfig",
                              f"expected a mapping, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError("PreprocessConfig", f"unknown key(s) {unknown}; valid keys are "
                                                  f"{sorted(known)}")
        return cls(**values)


def percentile_clip(x: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Clip ``x`` to its ``low``-th and ``high``-th percentiles; float32 out."""
    x = np.asarray(x, dtype=np.float32)
    lo, hi = np.percentile(x, [low, high])
    return np.clip(x, np.float32(lo), np.float32(hi))


def minmax_scale(x: np.ndarray) -> np.ndarray:
    """Scale ``x`` linearly to [0, 1] (float32); a constant image becomes all zeros."""
    x = np.asarray(x, dtype=np.float32)
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros_like(x)
    return (x - np.float32(lo)) * np.float32(1.0 / (hi - lo))


def pad_to_square(
    x: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Zero-pad a 2-D image to a square with the image centred (odd extra pixel at the end).

    Args:
        x: ``(H, W)`` image of any dtype.
        mask: Optional ``(H, W)`` mask, padded identically with zeros (outside).

    Returns:
        The padded image, or ``(image, mask)`` when a mask is given.
    """
    height, width = x.shape[:2]
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    pad = ((top, side - height - top), (left, side - width - left))
    padded = np.pad(x, pad) if side != height or side != width else x
    if mask is None:
        return padded
    _check_mask(x, mask)
    return padded, (np.pad(mask, pad) if padded is not x else mask)


def apply_clahe(img_uint8: np.ndarray, clip_limit: float = 2.0, tile_grid: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalization (OpenCV) of a uint8 ``(H, W)`` image."""
    _check_uint8(img_uint8, "apply_clahe")
    clahe = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(int(tile_grid),) * 2)
    return clahe.apply(np.ascontiguousarray(img_uint8))


def equalize(img_uint8: np.ndarray) -> np.ndarray:
    """Global histogram equalization (``cv2.equalizeHist``) of a uint8 ``(H, W)`` image."""
    _check_uint8(img_uint8, "equalize")
    return cv2.equalizeHist(np.ascontiguousarray(img_uint8))


def resize_image(x: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize with Lanczos (``cv2.INTER_LANCZOS4``) to ``size`` x ``size`` (or ``(H, W)``).

    The dtype is kept; float input can overshoot its range slightly (Lanczos rings), so
    callers clip where the range matters (:func:`preprocess` does).
    """
    height, width = (size, size) if np.isscalar(size) else size
    return cv2.resize(np.ascontiguousarray(x), (int(width), int(height)),
                      interpolation=cv2.INTER_LANCZOS4)


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a mask with nearest-neighbour interpolation; bool in, bool out."""
    height, width = (size, size) if np.isscalar(size) else size
    as_bool = mask.dtype == np.bool_
    src = np.ascontiguousarray(mask, dtype=np.uint8 if as_bool else mask.dtype)
    out = cv2.resize(src, (int(width), int(height)), interpolation=cv2.INTER_NEAREST)
    return out.astype(bool) if as_bool else out


def preprocess(
    pixels: np.ndarray, cfg: PreprocessConfig, mask: np.ndarray | None = None, *,
    max_pixels: int = DEFAULT_MAX_PIXELS, source: str | Path | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Turn raw pixels (air dark, any range) into the uint8 ``(size, size)`` cached image.

    Args:
        pixels: ``(H, W)`` intensities, e.g. :attr:`cxrlab.io.XrayImage.pixels`.
        cfg: The steps and their parameters (module docstring lists the order).
        mask: Optional ``(H, W)`` bool mask given the same padding and a nearest resize.
        max_pixels: Largest image this step may allocate: the padded square when
            ``cfg.pad_square``, else the image itself.
        source: The file the pixels came from, named in errors.

    Returns:
        uint8 ``(size, size)``, or ``(image, bool mask)`` when a mask is given.

    Raises:
        InputError: ``pixels`` is not a non-empty 2-D array of finite values, its aspect
            ratio is degenerate, or the mask's shape differs.
        ImageTooLargeError: The padded square (or the image) exceeds ``max_pixels``.
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.size == 0:
        raise InputError(source, f"preprocess needs a non-empty (H, W) image, got shape "
                                 f"{pixels.shape}")
    height, width = pixels.shape
    check_geometry(source, height, width, max_pixels=max_pixels)
    side = max(height, width)
    if cfg.pad_square and side * side > max_pixels:
        raise ImageTooLargeError(source, f"padding the {height} x {width} image to a square "
                                         f"would allocate {side} x {side} = {side * side} "
                                         f"pixels, above the limit of {max_pixels} (max_pixels)")
    if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
        raise InputError(source, "image has NaN or infinite pixel values")
    if mask is not None:
        mask = np.asarray(mask).astype(bool, copy=False)
        _check_mask(pixels, mask)
    x = pixels.astype(np.float32, copy=False)
    if cfg.clip_percentiles is not None:
        x = percentile_clip(x, *cfg.clip_percentiles)
    x = minmax_scale(x)
    if cfg.pad_square:
        if mask is None:
            x = pad_to_square(x)
        else:
            x, mask = pad_to_square(x, mask)
    if x.shape != (cfg.size, cfg.size):
        x = resize_image(x, cfg.size)
    img = np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
    if cfg.equalize:
        img = equalize(img)
    elif cfg.clahe:
        img = apply_clahe(img, cfg.clahe_clip_limit, cfg.clahe_tile_grid)
    if mask is None:
        return img
    if mask.shape != img.shape:
        mask = resize_mask(mask, cfg.size)
    return img, np.ascontiguousarray(mask)


def to_tensor(img_uint8: np.ndarray, channels: int = 1,
              normalization: str = "imagenet") -> torch.Tensor:
    """A uint8 ``(H, W)`` image as a normalized float32 tensor ``(channels, H, W)``.

    Args:
        img_uint8: The cached image.
        channels: 1, or 3 (the gray image repeated, for ImageNet-pretrained bodies).
        normalization: ``"unit"``: [0, 1]; ``"imagenet"``: ``(x - mean) / std`` per
            channel with the ImageNet statistics (one channel uses the mean of the three
            means and of the three stds); ``"xrv"``: [-1024, 1024] as torchxrayvision
            models expect (``(2 x / 255 - 1) * 1024``).

    Raises:
        ConfigError: ``channels`` or ``normalization`` is not one of the values above.
    """
    if channels not in (1, 3):
        raise ConfigError("to_tensor", f"channels must be 1 or 3, got {channels!r}")
    if normalization not in NORMALIZATIONS:
        raise ConfigError("to_tensor", f"normalization must be one of {NORMALIZATIONS}, "
                                       f"got {normalization!r}")
    _check_uint8(img_uint8, "to_tensor")
    # One 256-entry float32 table per channel, applied by indexing: no per-pixel float
    # arithmetic, and no torch intra-op threads (which oversubscribe DataLoader workers).
    table = _normalization_table(normalization, channels)
    return torch.from_numpy(np.take(table, img_uint8, axis=1))


@functools.lru_cache(maxsize=16)
def _normalization_table(normalization: str, channels: int) -> np.ndarray:
    """``table[c, v]``: the normalized value of gray level ``v`` in channel ``c``."""
    unit = np.arange(256, dtype=np.float32) / np.float32(255.0)
    if normalization == "xrv":
        values = (unit * np.float32(2.0) - np.float32(1.0)) * np.float32(XRV_MAX)
        return np.repeat(values[None], channels, axis=0)
    if normalization == "imagenet":
        if channels == 3:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:
            mean, std = (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)
        mean_a = np.asarray(mean, dtype=np.float32)[:, None]
        std_a = np.asarray(std, dtype=np.float32)[:, None]
        return ((unit[None] - mean_a) / std_a).astype(np.float32)
    return np.repeat(unit[None], channels, axis=0)


def _percentiles(value: Any) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise ConfigError("PreprocessConfig", f"clip_percentiles must be two numbers or null, "
                                              f"got {value!r}") from err
    if not 0.0 <= low < high <= 100.0:
        raise ConfigError("PreprocessConfig", f"clip_percentiles must satisfy "
                                              f"0 <= low < high <= 100, got {value!r}")
    return low, high


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check_uint8(img: np.ndarray, caller: str) -> None:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 2:
        shape = getattr(img, "shape", None)
        dtype = getattr(img, "dtype", type(img).__name__)
        raise TypeError(f"{caller} needs a uint8 (H, W) array, got {dtype} with shape {shape}")


def _check_mask(x: np.ndarray, mask: np.ndarray) -> None:
    if mask.shape != x.shape[:2]:
        raise InputError(None, f"mask shape {mask.shape} differs from image shape {x.shape[:2]}")
