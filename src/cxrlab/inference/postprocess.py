"""Post-processing of segmentation outputs: argmax, threshold search, flip TTA, small
components, triplet thresholding, the cascade's gate, and masks back to image size.

Seed 002 §5.2 turns the U-Net's two probability maps into a binary mask three ways:
**argmax** (for a softmax pair the same as foreground probability > 0.5), a
**threshold** searched on validation between 0.01 and 1, and **test-time augmentation**
(mean of the prediction and the un-flipped prediction of the flipped image). Beyond
the seed: removal of connected components below a minimum area, and **triplet**
thresholding (SIIM-ACR winners): an image gets a mask only when at least ``min_area``
pixels exceed ``top_threshold``; its mask is then every pixel above
``pixel_threshold``.

All functions take foreground probabilities ``(N, H, W)`` (numpy) and bool masks, and
compare ``prob > threshold`` in the probabilities' dtype. Every search scores one grid
of counts (:func:`threshold_counts`, one pass over the pixels), so searching 100
thresholds costs about as much as scoring one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import cv2
import numpy as np
import torch

from cxrlab.config.pneumothorax import METHODS, METRICS, THRESHOLDS, SearchGrids
from cxrlab.errors import ConfigError, InputError
from cxrlab.metrics.segmentation import get_stats

# ----------------------------------------------------------------------------- masks


def _probs(probs: Any) -> np.ndarray:
    if isinstance(probs, torch.Tensor):
        probs = probs.detach().cpu().numpy()
    array = np.asarray(probs)
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3:
        raise InputError(None, f"expected probabilities (N, H, W) or (N, 1, H, W), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
    return array


def argmax_masks(logits: np.ndarray | torch.Tensor) -> np.ndarray:
    """Masks from a two-channel output: the class with the larger logit (seed 002's ArgMax).

    A one-channel output is read as sigmoid logits (foreground where the logit > 0).

    Returns:
        bool ``(N, H, W)``.
    """
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().cpu().numpy()
    logits = np.asarray(logits)
    if logits.ndim != 4 or logits.shape[1] not in (1, 2):
        raise InputError(None, f"expected (N, 1|2, H, W) logits, got shape {logits.shape}")
    if logits.shape[1] == 1:
        return logits[:, 0] > 0
    return np.argmax(logits, axis=1).astype(bool)


def threshold_masks(probs: Any, threshold: float) -> np.ndarray:
    """``probs > threshold`` (compared in the probabilities' dtype), bool ``(N, H, W)``."""
    array = _probs(probs)
    return array > array.dtype.type(threshold)


def remove_small_components(masks: np.ndarray, min_area: int) -> np.ndarray:
    """Drop 8-connected components smaller than ``min_area`` pixels from each mask.

    Args:
        masks: bool ``(N, H, W)`` or ``(H, W)``.
        min_area: Smallest kept component, in pixels (0 or 1 keeps everything).

    Returns:
        A new bool array of the same shape.
    """
    masks = np.asarray(masks, dtype=bool)
    if min_area <= 1:
        return masks.copy()
    single = masks.ndim == 2
    stack = masks[None] if single else masks
    out = np.zeros_like(stack)
    for i, mask in enumerate(stack):
        if not mask.any():
            continue
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        keep = np.zeros(count, dtype=bool)
        keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area
        out[i] = keep[labels]
    return out[0] if single else out


def triplet_masks(probs: Any, top_threshold: float, min_area: int, pixel_threshold: float) -> np.ndarray:
    """Triplet thresholding: a mask (``probs > pixel_threshold``) only where at least
    ``min_area`` pixels exceed ``top_threshold``; otherwise an empty mask."""
    array = _probs(probs)
    top = (array > array.dtype.type(top_threshold)).reshape(len(array), -1).sum(axis=1)
    masks = array > array.dtype.type(pixel_threshold)
    masks[top < int(min_area)] = False
    return masks


def apply_gate(masks: np.ndarray, gate_probs: Any, gate_threshold: float = 0.5) -> np.ndarray:
    """Algorithm 1 of seed 002: empty the mask of every image the classifier calls negative.

    An image is negative when its gate probability is below ``gate_threshold`` (the
    classifier's decision is ``prob >= threshold``, as in :mod:`cxrlab.inference.classifier`).

    Returns:
        A copy of ``masks`` with the gated-negative masks emptied.
    """
    masks = np.array(masks, dtype=bool, copy=True)
    gate = np.asarray(gate_probs, dtype=np.float64).reshape(-1)
    if gate.size != len(masks):
        raise InputError(None, f"{gate.size} gate probabilities for {len(masks)} masks")
    masks[gate < gate_threshold] = False
    return masks


@torch.no_grad()
def hflip_tta(predict: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
              plain: torch.Tensor | None = None) -> torch.Tensor:
    """Horizontal-flip test-time augmentation.

    Args:
        predict: ``images (B, C, H, W) -> foreground probabilities (B, 1, H, W)``.
        images: The batch.
        plain: ``predict(images)`` when the caller already has it.

    Returns:
        The mean of ``predict(images)`` and ``flip(predict(flip(images)))``; the second
        prediction is flipped back, so both are in the input's orientation.
    """
    plain = predict(images) if plain is None else plain
    flipped = predict(torch.flip(images, dims=(-1,)))
    return (plain + torch.flip(flipped, dims=(-1,))) / 2


def restore_mask(mask: np.ndarray, original_shape: tuple[int, int], pad_square: bool = True) -> np.ndarray:
    """A mask predicted on the preprocessed square image, mapped back onto the source image.

    Undoes :func:`cxrlab.data.transforms.preprocess`: a nearest resize to the padded side
    (or straight to the source size without ``pad_square``), then the centred padding
    is cut off.

    Returns:
        bool ``original_shape`` in image orientation (row = y), ready for RLE.
    """
    height, width = (int(original_shape[0]), int(original_shape[1]))
    src = np.ascontiguousarray(mask, dtype=np.uint8)
    if not pad_square:
        return cv2.resize(src, (width, height), interpolation=cv2.INTER_NEAREST) > 0
    side = max(height, width)
    resized = cv2.resize(src, (side, side), interpolation=cv2.INTER_NEAREST) > 0
    top, left = (side - height) // 2, (side - width) // 2
    return resized[top:top + height, left:left + width]


# ---------------------------------------------------------------------------- counts


def _grid(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    grid = np.asarray(values, dtype=np.float64).reshape(-1)
    if grid.size == 0 or np.any(np.diff(grid) <= 0):
        raise ConfigError(f"postprocess.{name}", f"need a non-empty, strictly increasing grid, got {grid.tolist()}")
    return grid


def threshold_counts(probs: Any, truths: np.ndarray, thresholds: Sequence[float] | np.ndarray = THRESHOLDS,
                     chunk: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image tp/fp/fn of ``probs > t`` for every threshold ``t``, in one pass.

    Each pixel's number of thresholds below its probability is histogrammed per image
    (separately for true and false pixels); reverse cumulative sums give the counts.

    Args:
        probs: Foreground probabilities ``(N, H, W)``.
        truths: True masks ``(N, H, W)``.
        thresholds: Strictly increasing grid ``(K,)``.
        chunk: Images per pass (bounds memory).

    Returns:
        ``(tp, fp, fn)``, int64 ``(K, N)`` each.
    """
    array = _probs(probs)
    truths = np.asarray(truths, dtype=bool)
    if truths.ndim == 4 and truths.shape[1] == 1:
        truths = truths[:, 0]
    if truths.shape != array.shape:
        raise InputError(None, f"probabilities {array.shape} and true masks {truths.shape} differ in shape")
    grid = _grid(thresholds, "thresholds").astype(array.dtype)
    k, n = grid.size, len(array)
    tp = np.zeros((k, n), dtype=np.int64)
    fp = np.zeros((k, n), dtype=np.int64)
    area = truths.reshape(n, -1).sum(axis=1).astype(np.int64)
    for start in range(0, n, chunk):
        p = array[start:start + chunk].reshape(-1, array[0].size)
        y = truths[start:start + chunk].reshape(len(p), -1)
        level = np.searchsorted(grid, p, side="left")   # thresholds strictly below p
        flat = (np.arange(len(p))[:, None] * (k + 1) + level)
        size = len(p) * (k + 1)
        all_hist = np.bincount(flat.ravel(), minlength=size).reshape(len(p), k + 1)
        pos_hist = np.bincount(flat[y], minlength=size).reshape(len(p), k + 1)
        all_above = all_hist.sum(axis=1, keepdims=True) - np.cumsum(all_hist, axis=1)
        pos_above = pos_hist.sum(axis=1, keepdims=True) - np.cumsum(pos_hist, axis=1)
        # a pixel is positive at threshold j iff level > j, i.e. it is counted in hist[j+1:]
        tp[:, start:start + len(p)] = pos_above[:, :k].T
        fp[:, start:start + len(p)] = (all_above - pos_above)[:, :k].T
    fn = area[None, :] - tp
    return tp, fp, fn


def gated_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, open_: np.ndarray) -> tuple[
        np.ndarray, np.ndarray, np.ndarray]:
    """Counts after emptying the masks where ``open_`` is False (broadcasts over leading axes)."""
    return np.where(open_, tp, 0), np.where(open_, fp, 0), np.where(open_, fn, tp + fn)


def score_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, metric: str = "dice_per_image") -> np.ndarray:
    """A metric over the last axis (images) of count arrays of any leading shape.

    ``dice_per_image`` is the mean of per-image Dice with both-empty = 1 (as
    :func:`cxrlab.metrics.segmentation.dice_per_image`); the global metrics pool the
    counts (0/0 scores 0 here so a search never prefers an undefined value).
    """
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    if metric == "dice_per_image":
        denominator = 2 * tp + fp + fn
        per_image = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 1.0)
        return per_image.mean(axis=-1)
    if metric not in METRICS:
        raise ConfigError("postprocess.metric", f"unknown metric {metric!r}; choose from {METRICS}")
    tp_sum, fp_sum, fn_sum = tp.sum(axis=-1), fp.sum(axis=-1), fn.sum(axis=-1)
    if metric == "dice_global":
        num, den = 2 * tp_sum, 2 * tp_sum + fp_sum + fn_sum
    else:
        num, den = tp_sum, tp_sum + fp_sum + fn_sum
    return np.where(den > 0, num / np.maximum(den, 1e-12), 0.0)


# ------------------------------------------------------------------------ the recipe


@dataclass(frozen=True)
class Postprocess:
    """One post-processing recipe, as tuned on validation and stored with a run.

    Attributes:
        method: ``argmax`` (prob > 0.5), ``threshold`` or ``triplet``.
        tta: Average with the horizontally flipped prediction first.
        threshold: Pixel threshold of the ``threshold`` method.
        min_area: Components below this many pixels are removed (0 = off); for
            ``triplet``, the pixels above ``top_threshold`` an image needs for a mask.
        top_threshold: Triplet's "is there anything" threshold.
        pixel_threshold: Triplet's mask threshold.
        gate_threshold: Gate probability below which the cascade empties a mask; None
            for models without a gate.
    """

    method: str = "argmax"
    tta: bool = False
    threshold: float = 0.5
    min_area: int = 0
    top_threshold: float = 0.75
    pixel_threshold: float = 0.4
    gate_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError("postprocess.method", f"unknown method {self.method!r}; choose from {METHODS}")

    def masks(self, probs: Any, gate_probs: Any = None) -> np.ndarray:
        """Binary masks ``(N, H, W)`` from (already TTA-averaged, if ``tta``) probabilities."""
        if self.method == "triplet":
            masks = triplet_masks(probs, self.top_threshold, self.min_area, self.pixel_threshold)
        else:
            masks = threshold_masks(probs, 0.5 if self.method == "argmax" else self.threshold)
            if self.min_area > 1:
                masks = remove_small_components(masks, self.min_area)
        if self.gate_threshold is not None:
            if gate_probs is None:
                raise InputError(None, "this post-processing gates masks: pass the gate probabilities")
            masks = apply_gate(masks, gate_probs, self.gate_threshold)
        return masks

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Postprocess:
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError("postprocess", f"unknown key(s) {unknown}")
        return cls(**values)


@dataclass
class Tuned:
    """A tuned :class:`Postprocess` and its validation score."""

    postprocess: Postprocess
    score: float
    details: dict[str, Any] = field(default_factory=dict)


def _best_index(scores: np.ndarray) -> tuple[int, ...]:
    """Index of the maximum; among ties the one nearest the centroid of all tied indices."""
    ties = np.argwhere(scores >= np.max(scores) - 1e-12)
    centre = ties.mean(axis=0)
    return tuple(int(i) for i in ties[np.argmin(((ties - centre) ** 2).sum(axis=1))])


MAX_GATE_CANDIDATES = 64


def gate_candidates(gate_probs: Any, limit: int = MAX_GATE_CANDIDATES) -> np.ndarray:
    """Thresholds that realise every distinct gate decision on a set of probabilities.

    Midpoints between consecutive distinct probabilities, plus one below the smallest
    (every mask kept) and one above the largest (every mask emptied); evenly thinned by
    rank to at most ``limit`` values.
    """
    values = np.unique(np.asarray(gate_probs, dtype=np.float64).reshape(-1))
    if values.size == 0:
        return np.array([0.5])
    cuts = np.concatenate([[values[0] / 2], (values[:-1] + values[1:]) / 2, [(values[-1] + 1.0) / 2]])
    if cuts.size > limit:
        cuts = cuts[np.unique(np.linspace(0, cuts.size - 1, limit).round().astype(int))]
    return cuts


def gate_operating_point(has_finding: Any, gate_probs: Any) -> float:
    """The gate threshold with the highest Youden's J (sensitivity + specificity - 1) on validation.

    Candidates are :func:`gate_candidates` (midpoints between distinct probabilities, so
    the cut keeps a margin to both classes); among equal J the middle candidate wins.
    With a single class present the cut below every probability (keep all masks) is
    returned.
    """
    y = np.asarray(has_finding, dtype=bool).reshape(-1)
    p = np.asarray(gate_probs, dtype=np.float64).reshape(-1)
    cuts = gate_candidates(p, limit=max(p.size + 1, 2))
    if y.all() or not y.any():
        return float(cuts[0])
    sensitivity = (p[y][None, :] >= cuts[:, None]).mean(axis=1)
    specificity = (p[~y][None, :] < cuts[:, None]).mean(axis=1)
    youden = sensitivity + specificity - 1.0
    best = np.flatnonzero(youden >= youden.max() - 1e-12)
    return float(cuts[best[len(best) // 2]])


def _gate_open(gate_probs: Any, gate_grid: np.ndarray, n: int) -> np.ndarray:
    gate = np.asarray(gate_probs, dtype=np.float64).reshape(-1)
    if gate.size != n:
        raise InputError(None, f"{gate.size} gate probabilities for {n} images")
    return gate[None, :] >= gate_grid[:, None]          # (G, N)


def tune(method: str, probs: Any, truths: np.ndarray, grids: SearchGrids = SearchGrids(), tta: bool = False,
         gate_probs: Any = None, gate_threshold: float | None = None) -> Tuned:
    """Pick the parameters of ``method`` that maximise ``grids.metric`` on validation.

    Args:
        method: ``argmax``, ``threshold`` or ``triplet``.
        probs: Validation probabilities (TTA-averaged when ``tta``).
        truths: Validation masks.
        grids: What to search.
        tta: Recorded in the result (the caller averages the probabilities).
        gate_probs: The cascade's gate probabilities; the gate threshold follows
            ``grids.gate_thresholds`` (searched jointly with the mask parameters) or
            ``grids.gate_rule`` unless ``gate_threshold`` fixes it.
        gate_threshold: A fixed gate threshold.

    Returns:
        The best :class:`Tuned`. Ties (a plateau of equal validation scores, common for
        the gate threshold on a small validation set) go to the tied grid point nearest
        the centre of the tied set, not to the plateau's edge.
    """
    array = _probs(probs)
    truths = np.asarray(truths, dtype=bool).reshape(array.shape)
    n, area = len(array), array.shape[1] * array.shape[2]
    gated = gate_probs is not None
    if gate_threshold is not None:
        gate_grid = np.array([gate_threshold], dtype=np.float64)
    elif grids.gate_thresholds:
        gate_grid = np.asarray(grids.gate_thresholds, dtype=np.float64)
    elif gated and grids.gate_rule == "youden":
        has_finding = truths.reshape(n, -1).any(axis=1)
        gate_grid = np.array([gate_operating_point(has_finding, gate_probs)])
    elif gated and grids.gate_rule == "search":
        gate_grid = gate_candidates(gate_probs)
    elif gated:
        gate_grid = np.array([float(grids.gate_decision)])
    else:
        gate_grid = np.array([0.5])
    open_ = _gate_open(gate_probs, gate_grid, n)[:, None, :] if gated else np.ones((1, 1, n), dtype=bool)
    if method == "argmax":
        pixel = np.array([0.5])
    elif method == "threshold":
        pixel = _grid(grids.thresholds, "thresholds")
    elif method == "triplet":
        pixel = _grid(grids.pixel_thresholds, "pixel_thresholds")
    else:
        raise ConfigError("postprocess.method", f"unknown method {method!r}; choose from {METHODS}")
    tp, fp, fn = threshold_counts(array, truths, pixel)
    if method != "triplet":
        scores = score_counts(*gated_counts(tp[None], fp[None], fn[None], open_), grids.metric)  # (G, K)
        g, k = _best_index(scores)
        best = Postprocess(method=method, tta=tta, threshold=float(pixel[k]),
                           gate_threshold=float(gate_grid[g]) if gated else None)
        tuned = Tuned(best, float(scores[g, k]))
        if method == "threshold" and any(f > 0 for f in grids.min_area_fractions):
            tuned = _tune_min_area(tuned, array, truths, grids, gate_probs, area)
        return tuned
    top = _grid(grids.top_thresholds, "top_thresholds")
    top_tp, top_fp, _ = threshold_counts(array, truths, top)
    top_area = top_tp + top_fp                                               # (T, N)
    min_areas = np.array([int(round(f * area)) for f in grids.triplet_area_fractions])
    has_mask = top_area[:, None, :] >= min_areas[None, :, None]              # (T, M, N)
    combined = has_mask[None, :, :, None, :] & open_[:, None, None, :, :]     # (G, T, M, 1, N)
    scores = score_counts(*gated_counts(tp, fp, fn, combined), grids.metric)  # (G, T, M, P)
    g, t, m, k = _best_index(scores)
    best = Postprocess(method="triplet", tta=tta, top_threshold=float(top[t]), min_area=int(min_areas[m]),
                       pixel_threshold=float(pixel[k]), gate_threshold=float(gate_grid[g]) if gated else None)
    return Tuned(best, float(scores[g, t, m, k]))


def _tune_min_area(tuned: Tuned, probs: np.ndarray, truths: np.ndarray, grids: SearchGrids, gate_probs: Any,
                   area: int) -> Tuned:

    best = tuned
    for fraction in grids.min_area_fractions:
        candidate = replace(tuned.postprocess, min_area=int(round(fraction * area)))
        if candidate.min_area <= 1:
            continue
        tp, fp, fn, _ = get_stats(candidate.masks(probs, gate_probs), truths)
        score = float(score_counts(tp, fp, fn, grids.metric))
        if score > best.score:
            best = Tuned(candidate, score)
    return best
