"""SYNTHETIC brain MRI phantoms with gliomas, written in the BraTS layouts.

Nothing here is real anatomy: a head-sized ellipsoid of brain (skull-stripped: zero
outside), a grey-matter shell around white matter, two lateral ventricles, and a tumour
made of a necrotic core, an enhancing rim and surrounding edema with an irregular border.
Each tissue has its characteristic look per modality (relative intensities, scaled to
MRI-like integers with a smooth bias field and noise):

============  ====  ====  ====  =====
tissue        T1    T1ce  T2    FLAIR
============  ====  ====  ====  =====
white matter  0.80  0.80  0.35  0.45
grey matter   0.60  0.62  0.50  0.60
CSF           0.20  0.20  1.00  0.15
edema (ED)    0.50  0.52  0.85  0.95
necrosis      0.30  0.35  0.75  0.40
enhancing ET  0.55  1.25  0.60  0.70
============  ====  ====  ====  =====

Ages and survival days come from age, tumour size and location with noise (older
patients, larger tumours and deeper tumours live shorter), so a survival model has
something to learn. A few patients are written as ``ALIVE (N days later)`` and a share
as sub-total resections, as in the real CSV.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrlab.data.datasets.brats import FILE_SUFFIXES, LAYOUT_CONVENTION, LAYOUTS, MODALITIES, MSD_CHANNELS, \
    to_convention
from cxrlab.errors import ConfigError
from cxrlab.io.nifti import write_nifti
from cxrlab.utils import atomic_write_text

TISSUE_LOOK = {
    "wm": (0.80, 0.80, 0.35, 0.45),
    "gm": (0.60, 0.62, 0.50, 0.60),
    "csf": (0.20, 0.20, 1.00, 0.15),
    "ed": (0.50, 0.52, 0.85, 0.95),
    "ncr": (0.30, 0.35, 0.75, 0.40),
    "et": (0.55, 1.25, 0.60, 0.70),
}
"""Relative intensity of each tissue in (T1, T1ce, T2, FLAIR)."""


@dataclass
class PhantomCase:
    """One SYNTHETIC case: image ``(4, X, Y, Z)`` (MODALITIES order), canonical label, affine, clinical data."""

    case_id: str
    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    age: float
    days: float
    censored: bool
    resection: str


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], scale: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled linearly."""
    from scipy.ndimage import zoom

    coarse = rng.uniform(-1, 1, size=tuple(max(2, s // scale) for s in shape))
    field = zoom(coarse, [s / c for s, c in zip(shape, coarse.shape)], order=1)
    return field[: shape[0], : shape[1], : shape[2]]


def phantom_shape(size: int) -> tuple[int, int, int]:
    """BraTS's 240 x 240 x 155 aspect at ``size`` voxels across."""
    return (size, size, max(8, int(round(size * 155 / 240))))


def make_case(case_id: str, rng: np.random.Generator, size: int = 48, spacing: float | None = None) -> PhantomCase:
    """Draw one SYNTHETIC case at ``size`` voxels across (spacing default: 240 mm / size)."""
    shape = phantom_shape(size)
    spacing = spacing or 240.0 / size
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    centre = np.array(shape, dtype=np.float32) / 2 + rng.uniform(-0.03, 0.03, 3) * np.array(shape)
    semi = np.array(shape, dtype=np.float32) * np.array([0.36, 0.42, 0.42]) * rng.uniform(0.92, 1.05, 3)
    rel = (grid - centre[:, None, None, None]) / semi[:, None, None, None]
    radius = np.sqrt((rel ** 2).sum(0)) + 0.06 * _smooth_noise(rng, shape, 6)
    brain = radius < 1.0
    tissue = np.full(shape, "wm", dtype=object)
    tissue[radius > 0.78] = "gm"
    for side in (-1, 1):      # two lateral ventricles
        vc = centre + np.array([side * 0.12, -0.05, 0.05]) * semi
        vsemi = semi * np.array([0.08, 0.28, 0.16])
        vrel = (grid - vc[:, None, None, None]) / vsemi[:, None, None, None]
        tissue[(vrel ** 2).sum(0) < 1.0] = "csf"
    # the tumour: a centre well inside the brain, an irregular ellipsoid
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    depth = rng.uniform(0.0, 0.55)
    tcentre = centre + direction * depth * semi
    tsize = rng.uniform(0.28, 0.45) * semi.min() * rng.uniform(0.85, 1.15, 3)
    trel = (grid - tcentre[:, None, None, None]) / tsize[:, None, None, None]
    tr = np.sqrt((trel ** 2).sum(0)) + 0.12 * _smooth_noise(rng, shape, 4)
    label = np.zeros(shape, dtype=np.uint8)
    core = rng.uniform(0.3, 0.5)
    label[tr < 1.6] = 2                       # edema around
    label[tr < 0.75] = 3                      # enhancing rim
    label[tr < core] = 1                      # necrotic core
    label[~brain] = 0
    for name, cls in (("ed", 2), ("et", 3), ("ncr", 1)):
        tissue[label == cls] = name
    image = np.zeros((4, *shape), dtype=np.float32)
    for name, look in TISSUE_LOOK.items():
        where = tissue == name
        for c in range(4):
            image[c][where] = look[c]
    bias = 1.0 + 0.08 * _smooth_noise(rng, shape, 8)
    image = image * bias[None] + rng.normal(0, 0.04, image.shape).astype(np.float32)
    image = np.clip(image, 0.01, None) * 1000.0
    image[:, ~brain] = 0.0
    affine = np.diag([-spacing, -spacing, spacing, 1.0])
    affine[:3, 3] = [spacing * shape[0] / 2, spacing * shape[1] / 2, -spacing * shape[2] / 2]
    # clinical data: survival shortened by age, tumour volume and central location
    age = float(np.round(rng.uniform(25, 85), 3))
    wt_share = float((label > 0).sum() / brain.sum())
    brain_centroid = np.argwhere(brain).mean(0)
    tumour_centroid = np.argwhere(label > 0).mean(0) if label.any() else brain_centroid
    depth_share = float(np.linalg.norm((tumour_centroid - brain_centroid) / semi))
    days = 520.0 * np.exp(-0.028 * (age - 55) - 6.0 * (wt_share - 0.095) + 1.2 * (depth_share - 0.3))
    days = float(np.round(days * np.exp(rng.normal(0, 0.15)) + 30))
    censored = bool(rng.random() < 0.05)
    if censored:
        days = float(np.round(days * rng.uniform(0.5, 0.9)))
    resection = "GTR" if rng.random() < 0.8 else "STR"
    return PhantomCase(case_id, image, label, affine, age, days, censored, resection)


def write_phantoms(out: str | Path, layout: str = "brats2020", n: int = 12, size: int = 48, seed: int = 0,
                   survival: bool = True) -> list[str]:
    """Write ``n`` SYNTHETIC cases in ``layout`` under ``out`` (created); returns the case ids.

    The label volumes use the layout's convention (4 = ET in ``brats2020``, 3 in
    ``brats2023``; 1 = edema, 2 = non-enhancing in ``msd``). ``survival`` adds a 2020-style
    ``survival_info.csv`` (the real 2023 and Decathlon data ship none; phantoms do, so
    the survival model can be exercised on any layout).

    Raises:
        ConfigError: Unknown layout or ``n``/``size`` too small.
    """
    if layout not in LAYOUTS:
        raise ConfigError("layout", f"unknown BraTS layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    if n < 1 or size < 16:
        raise ConfigError("phantoms", f"need n >= 1 and size >= 16, got n={n}, size={size}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    convention = LAYOUT_CONVENTION[layout]
    rows = ["Brats20ID,Age,Survival_days,Extent_of_Resection"]
    ids = []
    for i in range(n):
        case_id = {"brats2020": f"SYNTH20_Training_{i + 1:03d}", "brats2023": f"SYNTH-GLI-{i + 1:05d}-000",
                   "msd": f"BRATS_{i + 1:03d}"}[layout]
        case = make_case(case_id, rng, size)
        label = to_convention(case.label, convention)
        if layout == "msd":
            stack = np.moveaxis(case.image[[MODALITIES.index(m) for m in MSD_CHANNELS]], 0, 3)
            write_nifti(out / "imagesTr" / f"{case_id}.nii.gz", stack.astype(np.float32), affine=case.affine)
            write_nifti(out / "labelsTr" / f"{case_id}.nii.gz", label, affine=case.affine)
        else:
            suffixes = FILE_SUFFIXES[layout]
            folder = out / case_id
            for c, modality in enumerate(MODALITIES):
                write_nifti(folder / f"{case_id}{suffixes[modality]}.nii.gz", np.rint(case.image[c]).astype(np.int16),
                            affine=case.affine)
            write_nifti(folder / f"{case_id}{suffixes['seg']}.nii.gz", label, affine=case.affine)
        survival_cell = f"ALIVE ({int(case.days)} days later)" if case.censored else str(int(case.days))
        rows.append(f"{case_id},{case.age},{survival_cell},{case.resection}")
        ids.append(case_id)
    if layout == "msd":
        atomic_write_text(out / "dataset.json", json.dumps({
            "name": "SYNTHETIC BrainTumour phantoms", "tensorImageSize": "4D",
            "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
            "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
            "numTraining": n, "training": [{"image": f"./imagesTr/{i}.nii.gz", "label": f"./labelsTr/{i}.nii.gz"}
                                           for i in ids]}, indent=2) + "\n")
    if survival:
        atomic_write_text(out / "survival_info.csv", "\n".join(rows) + "\n")
    atomic_write_text(out / "SYNTHETIC.txt", f"SYNTHETIC BraTS phantoms ({layout}, {n} cases, {size} voxels across, "
                                             f"seed {seed}); no real patient data.\n")
    return ids
