"""Preparing multi-channel brain MR volumes for a 3D network: brain crop, z-scoring, tumour boxes.

Weninger et al. 2018 (seed 004 poster): crop to the cuboid bounding box of the brain
(voxels non-zero in any channel of skull-stripped data), z-score each channel over its brain
voxels (:func:`preprocess`; :func:`uncrop` puts a result back into the full grid). For the
two-stage variant, :func:`downsample_image` / :func:`downsample_mask` give the locator its
coarse input and target, :func:`upsample_mask` brings its answer back, and
:func:`tumour_box` is the located box plus a margin, in which the second network works.
:func:`plane_slice`, :func:`colour_labels` and :func:`overlay_views` draw label overlays (the
PNGs a run writes and the dashboard's slice viewer). Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OVERLAY_COLOURS = {1: (220, 40, 40), 2: (40, 200, 60), 3: (250, 220, 40)}
"""Overlay colour (RGB) of the canonical classes NCR (red), ED (green), ET (yellow)."""
PLANES = {"axial": 2, "coronal": 1, "sagittal": 0}
"""The voxel axis each plane cuts across (BraTS volumes are stored RAS-like: x, y, z)."""

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


def _blocks(volume: np.ndarray, scale: int, fill: float | bool) -> np.ndarray:
    """``(..., x, y, z)`` padded with ``fill`` to multiples of ``scale`` and reshaped to ``(..., X, s, Y, s, Z, s)``."""
    spatial = volume.shape[-3:]
    pad = [(0, 0)] * (volume.ndim - 3) + [(0, -n % scale) for n in spatial]
    padded = np.pad(volume, pad, constant_values=fill)
    shape = padded.shape[:-3] + tuple(v for n in padded.shape[-3:] for v in (n // scale, scale))
    return padded.reshape(shape)


def downsample_image(image: np.ndarray, scale: int) -> np.ndarray:
    """``(C, x, y, z)`` averaged over ``scale``-cubes (partial cubes at the far edges average their voxels only)."""
    image = np.asarray(image, dtype=np.float32)
    if scale == 1:
        return np.ascontiguousarray(image)
    blocks = _blocks(image, scale, np.nan)
    return np.ascontiguousarray(np.nanmean(blocks, axis=(2, 4, 6)), dtype=np.float32)


def downsample_mask(mask: np.ndarray, scale: int) -> np.ndarray:
    """A ``(x, y, z)`` boolean mask on the ``scale``-coarser grid: a cube is set when any voxel in it is."""
    mask = np.asarray(mask, dtype=bool)
    if scale == 1:
        return mask
    return _blocks(mask, scale, False).any(axis=(1, 3, 5))


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


def window_uint8(channel: np.ndarray) -> np.ndarray:
    """A channel scaled to 0-255 between the 1st and 99th percentiles of its non-zero voxels."""
    inside = channel[channel != 0]
    if inside.size == 0:
        return np.zeros(channel.shape, dtype=np.uint8)
    lo, hi = np.percentile(inside, [1, 99])
    return (np.clip((channel - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def plane_slice(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """Slice ``index`` of ``(x, y, z)`` across ``plane`` (:data:`PLANES`), rotated so anterior/superior is up."""
    where = [slice(None)] * 3
    where[PLANES[plane]] = int(index)
    return np.rot90(volume[tuple(where)])


def colour_labels(gray: np.ndarray, labels: np.ndarray | None, alpha: float = 0.55) -> np.ndarray:
    """RGB uint8 of a grey slice with the canonical classes blended in their :data:`OVERLAY_COLOURS`."""
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
    if labels is not None:
        for cls, colour in OVERLAY_COLOURS.items():
            where = labels == cls
            rgb[where] = (1 - alpha) * rgb[where] + alpha * np.array(colour, dtype=np.float32)
    return rgb.astype(np.uint8)


def tumour_centre(*labels: np.ndarray | None) -> np.ndarray | None:
    """The voxel centroid of the first non-empty label volume (tumour = any class > 0), else None."""
    for volume in labels:
        if volume is not None and volume.any():
            return np.argwhere(volume > 0).mean(0).round().astype(int)
    return None


def overlay_views(flair: np.ndarray, canonical: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
    """An RGB strip: axial, coronal and sagittal slices of ``flair`` through the tumour centroid, prediction coloured.

    With ``truth`` a second row shows the reference. Slices are rotated so anterior is up.
    """
    centre = tumour_centre(canonical, truth)
    if centre is None:
        centre = np.array(flair.shape) // 2
    gray = window_uint8(flair)
    rows = []
    for labels in [canonical] + ([truth] if truth is not None else []):
        tiles = [colour_labels(plane_slice(gray, plane, centre[axis]), plane_slice(labels, plane, centre[axis]))
                 for plane, axis in PLANES.items()]
        height = max(t.shape[0] for t in tiles)
        tiles = [np.pad(t, ((0, height - t.shape[0]), (0, 2), (0, 0))) for t in tiles]
        rows.append(np.concatenate(tiles, axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(rows, axis=0)
