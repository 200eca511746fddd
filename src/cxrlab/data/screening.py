"""Data for the seed-003 normal-screening ensemble: targets, masks, preprocessing, items.

* Targets: :func:`screening_targets` turns multi-label rows into one class per
  configured disease — *normal* (no finding at all), *target* (this disease) or
  *others* (another finding) — and :func:`abnormal_truth` gives the normal-vs-abnormal
  reference the SVM is trained and scored on.
* Preprocessing exactly in seed 003's order (§3.2): percentile clip 0.5 / 99.5, min-max
  to 0-255, zero padding to a square, CLAHE (or global histogram equalization for the
  Table 6 ablation) at the padded native resolution, then the resize (default 1024 px).
  :mod:`cxrlab.data.transforms`' ``preprocess`` resizes *before* CLAHE, so
  :func:`screening_preprocess` composes the same primitives in the seed's order.
* Masks: lesion masks are dilated with a configurable OpenCV structuring element
  (:class:`DilationConfig`, the "with dilation" row of Table 6).
* :class:`ScreeningStore`: every image preprocessed once into a memory-mapped uint8
  array, with per-disease lesion masks packed as bits, so training decodes nothing.
* :class:`ScreeningItems`: the torch dataset of one model (one disease or all of them)
  with seed 003's augmentations (:func:`screening_augment`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from cxrlab.data.transforms import (PreprocessConfig, apply_clahe, equalize, minmax_scale,
                                    pad_to_square, percentile_clip, resize_image, resize_mask,
                                    to_tensor)
from cxrlab.errors import CacheError, ConfigError, InputError, SkipLog

if TYPE_CHECKING:
    from cxrlab.data.datasets.base import XrayDataset

log = logging.getLogger(__name__)

NORMAL, TARGET, OTHERS = 0, 1, 2
IGNORE = -100
STRUCTURING_SHAPES = {"ellipse": cv2.MORPH_ELLIPSE, "rect": cv2.MORPH_RECT,
                      "cross": cv2.MORPH_CROSS}
STORE_FORMAT = "cxrlab-screening-store"


# ----------------------------------------------------------------------------- targets


def abnormal_truth(labels: np.ndarray) -> np.ndarray:
    """Normal (0) / abnormal (1) reference per row of multi-label ``labels [N, C]``.

    Abnormal = any finding positive; normal = every finding negative; NaN when no finding
    is positive but some are unknown.
    """
    labels = np.asarray(labels, dtype=np.float32)
    positive = np.nan_to_num(labels, nan=0.0) == 1
    known = ~np.isnan(labels)
    out = np.full(len(labels), np.nan, dtype=np.float32)
    out[known.all(axis=1)] = 0.0
    out[positive.any(axis=1)] = 1.0
    return out


def screening_targets(labels: np.ndarray, pathologies: Sequence[str], diseases: Sequence[str],
                      num_classes: int = 3) -> np.ndarray:
    """Per-disease class indices ``int64 [N, D]`` from multi-label rows.

    Three classes (seed 003): ``0`` normal (every finding negative), ``1`` target (this
    disease positive), ``2`` others (this disease negative, another finding positive —
    any column of ``labels``, configured disease or not). Two classes (the seed's
    ablation): ``0`` not target (normal or others), ``1`` target.

    Unknown cases get :data:`IGNORE` (-100): the disease itself is NaN, or (3 classes)
    nothing is positive but some finding is NaN.

    Raises:
        ConfigError: A disease is not among ``pathologies``, or ``num_classes`` is not 2/3.
    """
    if num_classes not in (2, 3):
        raise ConfigError("model.num_classes", f"must be 2 or 3, got {num_classes!r}")
    pathologies = list(pathologies)
    missing = [d for d in diseases if d not in pathologies]
    if missing:
        raise ConfigError("data.diseases", f"{missing} not among the dataset's classes "
                                           f"{pathologies}")
    labels = np.asarray(labels, dtype=np.float32)
    truth = abnormal_truth(labels)
    out = np.full((len(labels), len(diseases)), IGNORE, dtype=np.int64)
    for d, name in enumerate(diseases):
        column = labels[:, pathologies.index(name)]
        target = column == 1
        negative = column == 0
        if num_classes == 2:
            out[negative, d] = 0
        else:
            out[negative & (truth == 0), d] = NORMAL
            out[negative & (truth == 1), d] = OTHERS
        out[target, d] = TARGET
    return out


# ----------------------------------------------------------------------------- masks


@dataclass(frozen=True)
class DilationConfig:
    """Dilation of the lesion masks before they restrict the reconstruction target.

    Attributes:
        enabled: False uses the masks as drawn (Table 6 "without dilation").
        shape: Structuring element: ``ellipse``, ``rect`` or ``cross``.
        size: Side of the structuring element in pixels at the training size (odd
            values keep it centred).
        iterations: Times the dilation is applied.
    """

    enabled: bool = True
    shape: str = "ellipse"
    size: int = 25
    iterations: int = 1

    def __post_init__(self) -> None:
        if self.shape not in STRUCTURING_SHAPES:
            raise ConfigError("data.dilation.shape", f"must be one of "
                                                     f"{sorted(STRUCTURING_SHAPES)}, got {self.shape!r}")
        for name in ("size", "iterations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"data.dilation.{name}", f"must be an integer >= 1, got {value!r}")

    def kernel(self) -> np.ndarray:
        """The OpenCV structuring element (uint8)."""
        return cv2.getStructuringElement(STRUCTURING_SHAPES[self.shape], (self.size, self.size))


def dilate_mask(mask: np.ndarray, cfg: DilationConfig) -> np.ndarray:
    """``mask`` (bool or 0/1) dilated as ``cfg`` says; uint8 0/1 of the same shape."""
    mask = (np.asarray(mask) > 0).astype(np.uint8)
    if not cfg.enabled or not mask.any():
        return mask
    return cv2.dilate(mask, cfg.kernel(), iterations=cfg.iterations)


# ----------------------------------------------------------------------------- preprocessing


def screening_preprocess(pixels: np.ndarray, cfg: PreprocessConfig,
                         masks: np.ndarray | None = None
                         ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Seed 003 §3.2 preprocessing: clip, min-max 0-255, pad, CLAHE / equalize, resize.

    Args:
        pixels: ``(H, W)`` raw intensities (air dark), e.g. ``XrayImage.pixels``.
        cfg: Size, clip percentiles, padding, CLAHE (``clahe``, clip limit, tile grid) or
            global equalization (``equalize``).
        masks: Optional ``(M, H, W)`` masks, padded and resized (nearest) like the image.

    Returns:
        uint8 ``(size, size)``, or with ``masks`` also bool ``(M, size, size)``.

    Raises:
        InputError: ``pixels`` is not a non-empty 2-D array, or the masks' shape differs.
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.size == 0:
        raise InputError(None, f"screening preprocess needs a non-empty (H, W) image, got "
                               f"shape {pixels.shape}")
    if masks is not None:
        masks = np.asarray(masks).astype(bool, copy=False)
        if masks.ndim != 3 or masks.shape[1:] != pixels.shape:
            raise InputError(None, f"masks {masks.shape} do not match image {pixels.shape}")
    x = pixels.astype(np.float32, copy=False)
    if cfg.clip_percentiles is not None:
        x = percentile_clip(x, *cfg.clip_percentiles)
    img = np.rint(minmax_scale(x) * 255.0).astype(np.uint8)
    out_masks = list(masks) if masks is not None else []
    if cfg.pad_square:
        img_padded = pad_to_square(img)
        out_masks = [pad_to_square(img, m)[1] for m in out_masks]
        img = img_padded
    if cfg.equalize:
        img = equalize(img)
    elif cfg.clahe:
        img = apply_clahe(img, cfg.clahe_clip_limit, cfg.clahe_tile_grid)
    if img.shape != (cfg.size, cfg.size):
        img = np.clip(resize_image(img, cfg.size), 0, 255).astype(np.uint8)
        out_masks = [resize_mask(m, cfg.size) for m in out_masks]
    if masks is None:
        return img
    stacked = (np.stack(out_masks) if out_masks
               else np.zeros((0, cfg.size, cfg.size), dtype=bool))
    return img, stacked


# ----------------------------------------------------------------------------- augmentation


def screening_augment(shift: float = 0.06, rotate: float = 10.0,
                      gamma: tuple[int, int] = (80, 120), p: float = 0.5,
                      seed: int | None = None) -> Callable[..., dict[str, Any]]:
    """Seed 003's training augmentations (albumentations; mask moves with the image).

    Shift (``±shift`` of the side) and rotation (``±rotate`` degrees) with zero fill,
    gamma correction (``gamma`` in percent), sharpening, blurring (one of Gaussian or box
    blur) and Gaussian noise, each applied with probability ``p``. No flips (chest
    anatomy is asymmetric).

    Returns:
        ``augment(image=uint8 (S, S), mask=uint8 (S, S)) -> {"image": ..., "mask": ...}``.
    """
    import albumentations as A

    return A.Compose([
        A.Affine(translate_percent=(-shift, shift), rotate=(-rotate, rotate),
                 border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=p),
        A.RandomGamma(gamma_limit=gamma, p=p),
        A.Sharpen(alpha=(0.1, 0.3), p=p / 2),
        A.OneOf([A.GaussianBlur(sigma_limit=(0.3, 1.0)), A.Blur(blur_limit=(3, 3))], p=p / 2),
        A.GaussNoise(std_range=(0.01, 0.04), p=p / 2),
    ], seed=seed)


# ----------------------------------------------------------------------------- store


def _mask_dtype(n_diseases: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if n_diseases <= np.iinfo(dtype).bits:
            return np.dtype(dtype)
    raise ConfigError("data.diseases", f"at most 32 diseases are supported, got {n_diseases}")


def _load_row(dataset: XrayDataset, i: int, cfg: PreprocessConfig, diseases: Sequence[str],
              with_masks: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Preprocessed image and bit-packed disease masks of row ``i`` (None = unknown).

    A row positive for configured diseases of which none has a mask is unknown; every
    other row of a mask-bearing, hard-labelled source has known masks (empty for the
    diseases it does not have).
    """
    pixels = dataset.image(i).pixels
    if not with_masks:
        return screening_preprocess(pixels, cfg), None
    raw = np.zeros((len(diseases),) + pixels.shape, dtype=bool)
    positives = [d for d, name in enumerate(diseases)
                 if dataset.labels[i, dataset.pathologies.index(name)] == 1]
    found = 0
    for d in positives:
        mask = dataset.mask(i, diseases[d])
        if mask is None:
            continue
        if mask.shape != pixels.shape:
            raise InputError(dataset.table.at[i, "path"],
                             f"mask of {diseases[d]!r} is {mask.shape}, image is {pixels.shape}")
        raw[d] = mask
        found += 1
    if positives and not found:
        return screening_preprocess(pixels, cfg), None
    image, masks = screening_preprocess(pixels, cfg, raw)
    packed = np.zeros(image.shape, dtype=_mask_dtype(len(diseases)))
    for d in range(len(diseases)):
        packed |= masks[d].astype(packed.dtype) << d
    return image, packed


def _load_chunk(dataset: XrayDataset, cfg: PreprocessConfig, diseases: Sequence[str],
                with_masks: Sequence[bool], rows: Sequence[int]
                ) -> list[tuple[int, np.ndarray | None, np.ndarray | None, InputError | None]]:
    """Rows of one worker chunk: ``(row, image, packed masks, error)``."""
    out = []
    for i in rows:
        try:
            image, packed = _load_row(dataset, i, cfg, diseases, with_masks[i])
            out.append((i, image, packed, None))
        except InputError as err:
            out.append((i, None, None, err))
    return out


def _iter_rows(dataset: XrayDataset, cfg: PreprocessConfig, diseases: Sequence[str],
               with_masks: np.ndarray, workers: int):
    """``(row, image, packed, error)`` for every row in order, in ``workers`` processes."""
    n = len(dataset)
    if workers <= 1 or n < 64:
        yield from _load_chunk(dataset, cfg, diseases, with_masks, range(n))
        return
    from concurrent.futures import ProcessPoolExecutor

    chunks = [list(range(k, min(k + 32, n))) for k in range(0, n, 32)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_load_chunk, dataset, cfg, diseases, with_masks, c)
                   for c in chunks[:2 * workers]]
        pending = chunks[2 * workers:]
        while futures:
            yield from futures.pop(0).result()
            if pending:
                futures.append(pool.submit(_load_chunk, dataset, cfg, diseases, with_masks,
                                           pending.pop(0)))


class ScreeningStore:
    """Preprocessed images and packed lesion masks of one dataset, memory-mapped.

    Folder layout: ``images.u8`` (uint8 ``[N, S, S]``), ``masks.bin`` (bit ``d`` of
    ``[M, S, S]`` = disease ``d``'s lesion), ``manifest.json`` (size, preprocessing,
    diseases, the ordered source paths, ``mask_slot`` (row -> mask row, -1 = no known
    mask) and the rows skipped as unreadable).

    Build with :meth:`build`; :meth:`open` refuses a store built from other paths,
    preprocessing or diseases (:class:`~cxrlab.errors.CacheError`).
    """

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.manifest = manifest
        n, size = manifest["n"], manifest["size"]
        self.images = np.memmap(self.folder / "images.u8", dtype=np.uint8, mode="r",
                                shape=(n, size, size)) if n else np.zeros((0, size, size), np.uint8)
        self.mask_slot = np.asarray(manifest["mask_slot"], dtype=np.int64)
        m = int((self.mask_slot >= 0).sum())
        dtype = np.dtype(manifest["mask_dtype"])
        self.masks = (np.memmap(self.folder / "masks.bin", dtype=dtype, mode="r",
                                shape=(m, size, size)) if m else np.zeros((0, size, size), dtype))
        self.diseases: list[str] = list(manifest["diseases"])
        self.skipped = np.asarray(manifest["skipped"], dtype=np.int64)

    def __len__(self) -> int:
        return int(self.manifest["n"])

    @property
    def size(self) -> int:
        return int(self.manifest["size"])

    def mask_known(self, i: int) -> bool:
        return bool(self.mask_slot[i] >= 0)

    def mask(self, i: int, disease: int | None = None) -> np.ndarray:
        """uint8 0/1 lesion mask of row ``i``: one disease (index) or the union (None);
        zeros when the row has no known mask."""
        slot = int(self.mask_slot[i])
        if slot < 0:
            return np.zeros((self.size, self.size), dtype=np.uint8)
        packed = np.asarray(self.masks[slot])
        if disease is None:
            return (packed != 0).astype(np.uint8)
        return ((packed >> disease) & 1).astype(np.uint8)

    @staticmethod
    def _manifest_key(dataset: XrayDataset, cfg: PreprocessConfig,
                      diseases: Sequence[str]) -> dict[str, Any]:
        return {"format": STORE_FORMAT, "size": cfg.size, "preprocess": cfg.to_dict(),
                "diseases": list(diseases), "paths": dataset.table["path"].astype(str).tolist()}

    @classmethod
    def open(cls, folder: str | Path, dataset: XrayDataset | None = None,
             cfg: PreprocessConfig | None = None, diseases: Sequence[str] | None = None
             ) -> ScreeningStore:
        """Open a store, checking it against ``dataset``/``cfg``/``diseases`` when given.

        Raises:
            CacheError: Missing, unreadable or built for other inputs.
        """
        folder = Path(folder)
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
        except (OSError, ValueError) as err:
            raise CacheError(folder, f"not a screening store ({err})") from err
        if manifest.get("format") != STORE_FORMAT:
            raise CacheError(folder, "not a screening store (format mismatch)")
        if dataset is not None and cfg is not None and diseases is not None:
            expected = cls._manifest_key(dataset, cfg, diseases)
            for key, value in expected.items():
                if manifest.get(key) != value:
                    raise CacheError(folder, f"stale screening store: {key} differs; delete the "
                                             "folder to rebuild it")
        return cls(folder, manifest)

    @classmethod
    def build(cls, dataset: XrayDataset, cfg: PreprocessConfig, diseases: Sequence[str],
              folder: str | Path, skips: SkipLog | None = None,
              progress: Callable[[int, int], None] | None = None,
              workers: int = 1) -> ScreeningStore:
        """Preprocess every row of ``dataset`` into ``folder`` (atomically; reused when
        the folder already holds a matching store).

        Masks are read for rows that are not weak-labelled (table column ``weak``) and
        whose adapter returns a mask; each configured disease the row is positive for gets
        ``dataset.mask(i, disease)`` (one mask per disease for VinDr; the generic CSV's
        single mask column serves every positive disease of the row).

        Args:
            skips: Receives unreadable images (``on_error="skip"`` records them; the
                default re-raises).
            progress: Called as ``progress(done, total)``.
            workers: Processes decoding images (1 = in this process).
        """
        folder = Path(folder)
        if (folder / "manifest.json").is_file():
            try:
                return cls.open(folder, dataset, cfg, diseases)
            except CacheError:
                log.warning("rebuilding stale screening store %s", folder)
        skips = skips or SkipLog("raise")
        n, size = len(dataset), cfg.size
        weak = (dataset.table["weak"].to_numpy(dtype=bool) if "weak" in dataset.table.columns
                else np.zeros(n, dtype=bool))
        with_masks = np.full(n, dataset.has_masks(), dtype=bool)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
        try:
            images = (np.memmap(tmp / "images.u8", dtype=np.uint8, mode="w+", shape=(n, size, size))
                      if n else None)
            (tmp / "images.u8").touch()
            dtype = _mask_dtype(len(diseases))
            mask_slot = np.full(n, -1, dtype=np.int64)
            skipped: list[int] = []
            slots = 0
            load_masks = with_masks & ~weak
            with open(tmp / "masks.bin", "wb") as masks_file:
                for i, image, packed, err in _iter_rows(dataset, cfg, diseases, load_masks,
                                                        int(workers)):
                    if err is not None:
                        skips.handle(err)
                        skipped.append(i)
                        continue
                    images[i] = image
                    if packed is not None:
                        mask_slot[i] = slots
                        slots += 1
                        masks_file.write(np.ascontiguousarray(packed, dtype=dtype).tobytes())
                    if progress is not None:
                        progress(i + 1, n)
            if images is not None:
                images.flush()
                del images
            manifest = {**cls._manifest_key(dataset, cfg, diseases), "n": n,
                        "mask_dtype": dtype.name, "mask_slot": mask_slot.tolist(),
                        "skipped": skipped}
            (tmp / "manifest.json").write_text(json.dumps(manifest))
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(folder, manifest)


# ----------------------------------------------------------------------------- torch items


class ScreeningItems(Dataset):
    """Training / evaluation items of one screening network.

    Args:
        store: The preprocessed images and masks.
        indices: Store rows served, in order (skipped rows are dropped).
        targets: ``int64 [N_store, D]`` from :func:`screening_targets` (all store rows).
        disease: Index of the per-disease model's disease (its column of ``targets`` and
            its lesion mask), or None for the shared-encoder model (all columns, union of
            the lesion masks).
        dilation: How lesion masks are dilated (after augmentation).
        augment: Optional albumentations-style callable (:func:`screening_augment`).
        channels: 1 or 3 input channels.
        normalization: ``imagenet``, ``xrv`` or ``unit`` (:func:`~cxrlab.data.transforms.to_tensor`).

    Items: ``image`` (C, S, S) normalized network input; ``unit`` (1, S, S) the same
    image in [0, 1] (the reconstruction is compared with it); ``mask`` (1, S, S) dilated
    lesion mask; ``mask_known`` bool; ``target`` long (per-disease) or long ``[D]``;
    ``index`` the store row.
    """

    def __init__(self, store: ScreeningStore, indices: np.ndarray, targets: np.ndarray,
                 disease: int | None, dilation: DilationConfig, augment: Callable | None = None,
                 channels: int = 1, normalization: str = "unit") -> None:
        indices = np.asarray(indices, dtype=np.int64)
        self.indices = indices[~np.isin(indices, store.skipped)]
        self.store = store
        self.targets = torch.from_numpy(np.asarray(targets, dtype=np.int64))
        self.disease = disease
        self.dilation = dilation
        self.augment = augment
        self.channels = channels
        self.normalization = normalization

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, k: int) -> dict[str, Any]:
        i = int(self.indices[k])
        image = np.array(self.store.images[i])
        mask = self.store.mask(i, self.disease)
        if self.augment is not None:
            out = self.augment(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        mask = dilate_mask(mask, self.dilation)
        unit = torch.from_numpy(np.ascontiguousarray(image)).to(torch.float32).div_(255.0)[None]
        target = self.targets[i] if self.disease is None else self.targets[i, self.disease]
        return {"image": to_tensor(np.ascontiguousarray(image), self.channels, self.normalization),
                "unit": unit, "mask": torch.from_numpy(np.ascontiguousarray(mask)).float()[None],
                "mask_known": self.store.mask_known(i), "target": target, "index": i}


def dilation_from_dict(values: dict[str, Any] | None) -> DilationConfig:
    """:class:`DilationConfig` from a recipe mapping (unknown keys raise ConfigError)."""
    values = dict(values or {})
    known = set(asdict(DilationConfig()))
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError("data.dilation", f"unknown key(s) {unknown}; known: {sorted(known)}")
    return DilationConfig(**values)
