"""SYNTHETIC knee MRI phantoms in the MRNet-v1.0 layout and as DICOM series.

A phantom is a 3-D label map of a knee on a ``grid``³ lattice (x: left-right, y:
posterior-anterior, z: inferior-superior, all in [-1, 1]): soft tissue, femur with two
condyles, tibia, patella, articular cartilage, medial and lateral menisci (wedge-shaped
rings), anterior and posterior cruciate ligaments, and a little joint fluid in the
suprapatellar pouch. Findings change the label map:

* ``acl``: ACL tear, a middle segment of the ligament replaced by fluid (a discontinuous
  ligament);
* ``meniscus``: a horizontal tear, a line of fluid signal through the posterior horn of one
  meniscus (a bright line through the wedge);
* ``other``: an effusion (a distended suprapatellar pouch) or a bone bruise (marrow oedema in a
  condyle or the tibial plateau).

MRNet's ``abnormal`` label is any finding. The map is resliced into the three planes
(sagittal, coronal, axial) with each plane's contrast (sagittal T2, coronal T1, axial PD, as
MRNet's series), a slice count drawn per exam and plane, a smooth bias field and noise, and
stored as uint8 ``(slices, grid, grid)`` arrays, as MRNet stores its 256 x 256 slices.

Everything written is SYNTHETIC: folders hold ``README.txt`` saying so, DICOMs carry
PatientName ``SYNTHETIC^KNEE``. Output is deterministic for a seed.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrlab.errors import ConfigError
from cxrlab.utils import atomic_write_json

log = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("abnormal", "acl", "meniscus")
PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")
FINDINGS: tuple[str, ...] = ("acl", "meniscus", "other")
MANIFEST = "synthetic_manifest.json"
README_TEXT = ("SYNTHETIC PHANTOM DATA — not real patients.\n\n"
               "Written by cxrlab (cxrlab.data.synthetic_knee) in the MRNet-v1.0 layout: {n} knee exams, "
               "slices of {grid} x {grid} px, seed {seed}.\nThe volumes are generated knee phantoms for tests "
               "and demos; they show no real person and must not be used to evaluate clinical performance.\n")

# tissue labels
BACKGROUND, SOFT, MARROW, CARTILAGE, MENISCUS, LIGAMENT, FLUID, BRUISE = range(8)
CONTRAST: dict[str, np.ndarray] = {
    #                  bg  soft marrow cart men lig fluid bruise
    "sagittal": np.array([0, 70, 60, 120, 15, 20, 230, 200], dtype=np.float32),    # T2 (fat-suppressed)
    "coronal": np.array([0, 110, 200, 90, 20, 30, 50, 70], dtype=np.float32),      # T1
    "axial": np.array([0, 100, 150, 140, 25, 35, 190, 190], dtype=np.float32),     # PD
}
"""Signal (0..255) of each tissue label in each plane's sequence."""
SERIES_DESCRIPTIONS = {"sagittal": "SAG T2 SYNTHETIC", "coronal": "COR T1 SYNTHETIC", "axial": "AX PD SYNTHETIC"}
_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}      # the lattice axis each plane's slices step along


@dataclass(frozen=True)
class KneeExam:
    """One SYNTHETIC exam: per-plane uint8 arrays and its labels."""

    exam_id: str
    planes: dict[str, np.ndarray]
    findings: tuple[str, ...]

    @property
    def labels(self) -> dict[str, int]:
        return {"abnormal": int(bool(self.findings)), "acl": int("acl" in self.findings),
                "meniscus": int("meniscus" in self.findings)}


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance of each point to the segment a-b, and the position t in [0, 1] along it."""
    ab = b - a
    t = np.clip(((points - a) @ ab) / float(ab @ ab), 0.0, 1.0)
    nearest = a + t[..., None] * ab
    return np.linalg.norm(points - nearest, axis=-1), t


def knee_labels(rng: np.random.Generator, grid: int, findings: Sequence[str] = ()) -> np.ndarray:
    """A label map ``(grid, grid, grid)`` indexed ``[x, y, z]`` (see the module docstring).

    Raises:
        ConfigError: An unknown finding.
    """
    unknown = sorted(set(findings) - set(FINDINGS))
    if unknown:
        raise ConfigError("findings", f"unknown finding(s) {unknown}; choose from {FINDINGS}")
    axis = np.linspace(-1.0, 1.0, grid, dtype=np.float32)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    points = np.stack([x, y, z], axis=-1)
    j = lambda scale: float(rng.uniform(-scale, scale))     # noqa: E731 - per-exam jitter
    labels = np.zeros((grid,) * 3, dtype=np.uint8)
    r_xy = np.hypot(x, y - 0.05)
    labels[r_xy < 0.85 + j(0.05)] = SOFT

    joint = j(0.04)                                          # height of the joint line
    condyle_r = 0.24 + j(0.02)
    condyles = [np.array([s * (0.24 + j(0.02)), j(0.03), joint + 0.06 + condyle_r]) for s in (-1, 1)]
    femur = (np.hypot(x, y) < 0.3) & (z > joint + 0.06 + condyle_r)
    cartilage_f = np.zeros_like(femur)
    for center in condyles:
        d = np.linalg.norm(points - center, axis=-1)
        femur |= d < condyle_r
        cartilage_f |= (d >= condyle_r) & (d < condyle_r + 0.05) & (z < center[2])
    tibia = ((np.hypot(x, y) < 0.42) & (z < joint - 0.11) & (z > joint - 0.3)) | \
            ((np.hypot(x, y) < 0.28) & (z <= joint - 0.3))
    cartilage_t = (np.hypot(x, y) < 0.4) & (z >= joint - 0.11) & (z < joint - 0.06)
    labels[cartilage_f] = CARTILAGE
    labels[cartilage_t] = CARTILAGE
    labels[femur | tibia] = MARROW
    patella_c = np.array([0.0, 0.55 + j(0.03), joint + 0.35])
    patella = (((x - patella_c[0]) / 0.2) ** 2 + ((y - patella_c[1]) / 0.08) ** 2
               + ((z - patella_c[2]) / 0.15) ** 2) < 1
    labels[patella] = MARROW

    # menisci: a wedge-shaped ring around each compartment, thickest at the periphery
    meniscus_masks = []
    for s in (-1, 1):
        d = np.hypot(x - s * 0.22, y)
        height = max(0.055, 1.6 / (grid - 1))                 # >= ~2 voxels tall at the periphery
        wedge = np.clip((d - 0.1) / 0.12, 0.0, 1.0) * height
        mask = (d > 0.1) & (d < 0.24) & (np.abs(z - joint) < wedge) & (np.abs(z - joint) < height + 0.005)
        labels[mask] = MENISCUS
        meniscus_masks.append((mask, d))

    fluid = (((x / 0.2) ** 2 + ((y - 0.42) / 0.035) ** 2 + ((z - joint - 0.55) / 0.1) ** 2) < 1)
    if "other" in findings and rng.random() < 0.5:
        fluid = (((x / 0.32) ** 2 + ((y - 0.42) / 0.11) ** 2 + ((z - joint - 0.5) / 0.25) ** 2) < 1)
    elif "other" in findings:
        s = rng.choice([-1, 1])
        center = np.array([s * 0.24, j(0.05), joint + (0.2 if rng.random() < 0.5 else -0.2)])
        labels[(np.linalg.norm(points - center, axis=-1) < 0.1 + j(0.02)) & (labels == MARROW)] = BRUISE
    labels[fluid & (labels == SOFT)] = FLUID

    # cruciate ligaments in the notch
    acl_a = np.array([0.07, -0.12, joint + 0.22])             # femur, posterior-lateral
    acl_b = np.array([-0.02, 0.14, joint - 0.08])             # tibia, anterior
    voxel = 2.0 / (grid - 1)
    acl_d, acl_t = _segment_distance(points, acl_a, acl_b)
    acl = acl_d < max(0.055, 1.5 * voxel)                     # at least ~3 voxels across on small grids
    pcl_d, _ = _segment_distance(points, np.array([-0.07, 0.06, joint + 0.2]), np.array([0.0, -0.22, joint - 0.12]))
    labels[pcl_d < max(0.06, 1.5 * voxel)] = LIGAMENT
    labels[acl] = LIGAMENT
    if "acl" in findings:
        # the torn ligament's fibres are gone over a mid segment and the notch around the stumps fills
        # with fluid and oedema (a bright blob on T2/PD, wider than the ligament: at 48 px it spans more
        # than one sagittal slice spacing, so every sagittal series of >= 8 slices shows it)
        start = 0.35 + j(0.05)
        segment = acl & (acl_t > start) & (acl_t < start + 0.3)
        centre = acl_a + (start + 0.15) * (acl_b - acl_a)
        oedema = (np.linalg.norm(points - centre, axis=-1) < 0.16 + j(0.01)) & np.isin(labels, (SOFT, LIGAMENT, CARTILAGE))
        labels[segment | oedema] = FLUID
    if "meniscus" in findings:
        mask, d = meniscus_masks[int(rng.integers(2))]
        line = np.abs(z - joint - 0.5 * (d - 0.17) * 0.3) < max(1.0 / grid, 0.6 * voxel)
        labels[mask & (y < 0.0) & line] = FLUID
    return labels


def reslice(rng: np.random.Generator, labels: np.ndarray, plane: str, num_slices: int) -> np.ndarray:
    """``num_slices`` slices of ``labels`` in ``plane`` with its contrast, bias field and noise.

    Returns:
        uint8 ``(num_slices, grid, grid)``: sagittal slices show (superior-up z, anterior-right y),
        coronal (z, x), axial (y, x).
    """
    grid = labels.shape[0]
    positions = np.round(np.linspace(0.1, 0.9, num_slices) * (grid - 1)).astype(int)
    taken = np.take(labels, positions, axis=_AXIS[plane])
    if plane == "sagittal":
        slices = np.transpose(taken, (0, 2, 1))[:, ::-1, :]
    elif plane == "coronal":
        slices = np.transpose(taken, (1, 2, 0))[:, ::-1, :]
    else:
        slices = np.transpose(taken, (2, 1, 0))[:, ::-1, :]
    image = CONTRAST[plane][slices]
    u = np.linspace(-1, 1, grid, dtype=np.float32)
    bias = 1.0 + 0.15 * (rng.uniform(-1, 1) * u[None, :, None] + rng.uniform(-1, 1) * u[None, None, :])
    image = image * bias * rng.uniform(0.85, 1.15) + rng.normal(0.0, 8.0, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def generate_exam(rng: np.random.Generator, exam_id: str, grid: int, findings: Sequence[str],
                  slices: Mapping[str, tuple[int, int]]) -> KneeExam:
    """One exam: the label map resliced in every plane with a slice count from ``slices[plane]``."""
    labels = knee_labels(rng, grid, findings)
    planes = {}
    for plane in PLANES:
        low, high = slices[plane]
        planes[plane] = reslice(rng, labels, plane, int(rng.integers(low, high + 1)))
    return KneeExam(exam_id, planes, tuple(findings))


def _slices_arg(slices: tuple[int, int] | Mapping[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    per_plane = dict(slices) if isinstance(slices, Mapping) else {p: tuple(slices) for p in PLANES}
    for plane in PLANES:
        low, high = (int(v) for v in per_plane.get(plane, (0, 0)))
        if not 1 <= low <= high:
            raise ConfigError("slices", f"{plane}: need 1 <= min <= max slices, got {per_plane.get(plane)}")
        per_plane[plane] = (low, high)
    return per_plane


def write_mrnet_phantoms(out: str | Path, n_train: int, n_valid: int, *, grid: int = 64, seed: int = 0,
                         prevalence: Mapping[str, float] | None = None,
                         slices: tuple[int, int] | Mapping[str, tuple[int, int]] = (12, 20),
                         overwrite: bool = False) -> Path:
    """Write SYNTHETIC exams in the MRNet-v1.0 layout.

    ``out/{train,valid}/{axial,coronal,sagittal}/NNNN.npy`` and ``out/{split}-{task}.csv``
    (no header, rows ``NNNN,label``), numbered on across the splits as MRNet numbers its
    validation exams after the training ones; plus ``README.txt`` and a manifest.

    Args:
        out: The dataset folder (written to a temporary folder, then renamed into place).
        n_train, n_valid: Exams per split.
        grid: Side of the slices (and of the lattice).
        seed: Seed of everything.
        prevalence: Share of exams with each finding (``acl``, ``meniscus``, ``other``),
            drawn independently; default 0.4 / 0.4 / 0.3.
        slices: ``(min, max)`` slice count, one pair for all planes or one per plane.
        overwrite: Replace an earlier phantom set (one with a manifest).

    Raises:
        ConfigError: Bad counts or shares, or ``out`` holds other files.
    """
    out = Path(out)
    share = {"acl": 0.4, "meniscus": 0.4, "other": 0.3, **dict(prevalence or {})}
    if set(share) - set(FINDINGS) or any(not 0.0 <= float(v) <= 1.0 for v in share.values()):
        raise ConfigError("prevalence", f"shares of {FINDINGS} in [0, 1], got {share}")
    if n_train < 1 or n_valid < 0 or grid < 16:
        raise ConfigError("n_train/n_valid/grid", f"need n_train >= 1, n_valid >= 0, grid >= 16; got "
                                                  f"{n_train}, {n_valid}, {grid}")
    per_plane = _slices_arg(slices)
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(out, "output folder is not empty; pass overwrite=True (--overwrite)")
        if not (out / MANIFEST).is_file():
            raise ConfigError(out, f"output folder holds no {MANIFEST}; refusing to replace a folder cxrlab "
                                   "did not write")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    rng = np.random.default_rng(seed)
    records = []
    try:
        number = 0
        for split, count in (("train", n_train), ("valid", n_valid)):
            rows: dict[str, list[str]] = {task: [] for task in TASKS}
            for _ in range(count):
                exam_id = f"{number:04d}"
                number += 1
                findings = tuple(f for f in FINDINGS if rng.random() < float(share[f]))
                exam = generate_exam(rng, exam_id, grid, findings, per_plane)
                for plane, array in exam.planes.items():
                    (tmp / split / plane).mkdir(parents=True, exist_ok=True)
                    np.save(tmp / split / plane / f"{exam_id}.npy", array)
                for task, value in exam.labels.items():
                    rows[task].append(f"{exam_id},{value}")
                records.append({"split": split, "id": exam_id, "findings": list(findings)})
            for task in TASKS:
                (tmp / f"{split}-{task}.csv").write_text("".join(r + "\n" for r in rows[task]))
        (tmp / "README.txt").write_text(README_TEXT.format(n=n_train + n_valid, grid=grid, seed=seed))
        atomic_write_json(tmp / MANIFEST, {"note": "SYNTHETIC PHANTOM DATA — not real patients",
                                           "layout": "mrnet", "grid": grid, "seed": seed, "exams": records})
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %d SYNTHETIC knee exams to %s", n_train + n_valid, out)
    return out


def write_dicom_exam(planes: Mapping[str, np.ndarray], folder: str | Path, exam_id: str,
                     spacing: Mapping[str, tuple[float, float]] | None = None) -> Path:
    """Write an exam's planes as three SYNTHETIC MR DICOM series (one file per slice).

    Each plane goes to ``folder/<plane>/`` with ImageOrientationPatient of that plane,
    ImagePositionPatient stepping along the slice normal, PixelSpacing, SliceThickness and
    the SeriesDescription of :data:`SERIES_DESCRIPTIONS`. Files are named in reverse slice
    order, so readers must order by position.

    Args:
        planes: plane -> uint8 ``(slices, H, W)``.
        folder: The exam's folder.
        exam_id: PatientID (and part of the UIDs' meaning, not of their value).
        spacing: plane -> (slice spacing, pixel spacing) in mm; default (3.0, 0.5).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    iops = {"sagittal": [0.0, 1.0, 0.0, 0.0, 0.0, -1.0], "coronal": [1.0, 0.0, 0.0, 0.0, 0.0, -1.0],
            "axial": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]}
    study = generate_uid()
    for number, (plane, array) in enumerate(sorted(planes.items()), start=1):
        step, pixel = (spacing or {}).get(plane, (3.0, 0.5))
        iop = np.array(iops[plane])
        normal = np.cross(iop[:3], iop[3:])
        series = generate_uid()
        for k in range(array.shape[0]):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"     # MR Image Storage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.PatientName, ds.PatientID = "SYNTHETIC^KNEE", exam_id
            ds.Modality, ds.BodyPartExamined = "MR", "KNEE"
            ds.ImageComments = "SYNTHETIC PHANTOM DATA - not real patients"
            ds.SeriesDescription = SERIES_DESCRIPTIONS[plane]
            ds.SeriesNumber, ds.InstanceNumber = number, k + 1
            ds.ImageOrientationPatient = [float(v) for v in iop]
            ds.ImagePositionPatient = [float(v) for v in np.array([-60.0, -60.0, 40.0]) + k * step * normal]
            ds.SliceThickness, ds.PixelSpacing = float(step), [float(pixel), float(pixel)]
            ds.Rows, ds.Columns = array.shape[1:]
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
            ds.PixelData = np.ascontiguousarray(array[k], dtype=np.uint8).tobytes()
            path = folder / plane / f"IM{array.shape[0] - k:04d}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
    (folder / "README.txt").write_text("SYNTHETIC PHANTOM DATA — not real patients.\n")
    return folder
