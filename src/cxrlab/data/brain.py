"""Preparing multi-channel brain MR volumes for a 3D network: brain crop, z-scoring, tumour boxes.

Weninger et al. 2018 (seed 004 poster): crop to the cuboid bounding box of the brain
(voxels non-zero in any channel of skull-stripped data), z-score each channel over its brain
voxels (:func:`preprocess`; :func:`uncrop` puts a result back into the full grid). For the
two-stage variant, :func:`downsample_image` / :func:`downsample_mask` give the locator its
coarse input and target, :func:`upsample_mask` brings its answer back, and
:func:`tumour_box` is the located box plus a margin, in which the second network works.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

Box = tuple[tuple[int, int, int], tuple[int, int, int]]
"""``(start, end)`` of a cuboid: ``volume[start[0]:end[0], start[1]:end[1], start[2]:end[2]]``."""


@dataclass
class Cropped:
    """A preprocessed case: channels cropped to the brain box and z-scored.

    Attributes:
        image: ``(4, x, y, z)`` float32.
        label: ``(1, x, y, z)`` uint8 canonical classes, or None.
        box_start, box_end: The crop in the full grid (``full[box_start:box_end]``).
        full_shape: The case's grid.
    """

    image: np.ndarray
    label: np.ndarray | None
    box_start: tuple[int, int, int]
    box_end: tuple[int, int, int]
    full_shape: tuple[int, int, int]


def brain_mask(image: np.ndarray) -> np.ndarray:
    """Voxels non-zero in any channel of ``(C, X, Y, Z)`` (the data are skull-stripped)."""
    return np.any(image != 0, axis=0)


def box_slices(box: Box) -> tuple[slice, slice, slice]:
    """The three slices of a box."""
    start, end = box
    return tuple(slice(int(s), int(e)) for s, e in zip(start, end))  # type: ignore[return-value]


def preprocess(image: np.ndarray, label: np.ndarray | None = None) -> Cropped:
    """Crop ``(C, X, Y, Z)`` to the brain's bounding box and z-score each channel over its brain voxels.

    Uses MONAI's ``generate_spatial_bounding_box`` and ``NormalizeIntensity(nonzero=True,
    channel_wise=True)``; voxels outside the brain stay 0. An empty image keeps the full grid.
    """
    from monai.transforms import NormalizeIntensity
    from monai.transforms.utils import generate_spatial_bounding_box

    full_shape = tuple(int(s) for s in image.shape[1:])
    if np.any(image != 0):
        start, end = generate_spatial_bounding_box(image, select_fn=lambda x: x != 0)
    else:
        start, end = [0, 0, 0], list(full_shape)
    box = box_slices((tuple(start), tuple(end)))
    cropped = np.ascontiguousarray(image[(slice(None), *box)], dtype=np.float32)
    normalized = np.asarray(NormalizeIntensity(nonzero=True, channel_wise=True)(cropped), dtype=np.float32)
    cropped_label = None if label is None else np.ascontiguousarray(label[box][None].astype(np.uint8))
    return Cropped(normalized, cropped_label, tuple(int(s) for s in start), tuple(int(e) for e in end),
                   full_shape)  # type: ignore[arg-type]


def uncrop(cropped: np.ndarray, prep: Cropped, fill: int = 0) -> np.ndarray:
    """Put a ``(x, y, z)`` array of the crop back into the case's full grid."""
    full = np.full(prep.full_shape, fill, dtype=cropped.dtype)
    full[box_slices((prep.box_start, prep.box_end))] = cropped
    return full


def downsample_image(image: np.ndarray, scale: int) -> np.ndarray:
    """``(C, x, y, z)`` averaged over ``scale``-cubes (partial cubes at the far edges count their voxels only)."""
    if scale == 1:
        return np.ascontiguousarray(image, dtype=np.float32)
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    pooled = F.avg_pool3d(x, kernel_size=scale, stride=scale, ceil_mode=True, count_include_pad=False)
    return pooled[0].numpy()


def downsample_mask(mask: np.ndarray, scale: int) -> np.ndarray:
    """A ``(x, y, z)`` boolean mask on the ``scale``-coarser grid: a cube is set when any voxel in it is."""
    if scale == 1:
        return np.asarray(mask, dtype=bool)
    x = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    return F.max_pool3d(x, kernel_size=scale, stride=scale, ceil_mode=True)[0, 0].numpy() > 0


def upsample_mask(coarse: np.ndarray, scale: int, shape: tuple[int, ...]) -> np.ndarray:
    """The coarse mask of :func:`downsample_mask` back on the fine grid ``shape`` (each cell repeated)."""
    fine = np.asarray(coarse, dtype=bool)
    for axis in range(3):
        fine = np.repeat(fine, scale, axis=axis)
    return fine[: shape[0], : shape[1], : shape[2]]


def tumour_box(mask: np.ndarray, margin: int) -> Box | None:
    """The bounding box of ``mask`` grown by ``margin`` voxels per side (clipped to the grid); None when empty."""
    points = np.argwhere(mask)
    if not len(points):
        return None
    start = np.maximum(points.min(0) - margin, 0)
    end = np.minimum(points.max(0) + 1 + margin, np.array(mask.shape))
    return tuple(int(v) for v in start), tuple(int(v) for v in end)  # type: ignore[return-value]
