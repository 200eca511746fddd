"""Volumes: a series of slices with its spacing and orientation, from .npy, NIfTI or DICOM.

A :class:`Volume` holds ``array`` of shape ``(slices, rows, columns)`` in slice order, the
spacing in millimetres along those three axes (NaN where the source does not say), the
direction cosines of the row, column and slice axes in the DICOM patient frame (LPS), and
the anatomical plane the slices lie in (``axial``, ``coronal`` or ``sagittal``).

Sources:

* MRNet-v1.0 ``.npy`` files (:func:`read_npy`): a uint8 ``(slices, 256, 256)`` array per exam
  and plane; the release keeps no spacing, so it is NaN, and the plane is the folder's.
* NIfTI-1/2 (:func:`read_nifti`, nibabel): the third voxel axis is the slice axis (as
  dcm2niix writes series); spacing from the header's zooms, directions from the affine
  (RAS, converted to LPS).
* A DICOM series folder (:func:`read_dicom_series`, pydicom): files are grouped by
  SeriesInstanceUID; slices are ordered by the projection of ImagePositionPatient on the
  slice normal (the cross product of the two ImageOrientationPatient vectors), falling back
  to InstanceNumber when positions are missing; the slice spacing is the median distance
  between neighbouring positions (else SpacingBetweenSlices, else SliceThickness). An
  enhanced multi-frame object (one file, ``NumberOfFrames`` > 1, e.g. Enhanced MR Image
  Storage) is read the same way from its per-frame functional groups (PlanePositionSequence)
  and shared ones (PlaneOrientationSequence, PixelMeasuresSequence); without per-frame
  positions the frames keep their stored order. :func:`read_dicom_exam` picks one series per
  plane by orientation, or by SeriesDescription where the orientation is missing.

Intensities are the modality LUT's output (Rescale Slope/Intercept) as float32; MRNet's
uint8 arrays are returned as stored.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrlab.errors import ExamError, ImageReadError, MissingFileError, VolumeError
from cxrlab.io.dicom import check_decodable, looks_like_dicom, transfer_syntax
from cxrlab.io.guard import decoding

log = logging.getLogger(__name__)

PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")
"""The three planes, in MRNet's folder order."""

_NAN3 = (math.nan, math.nan, math.nan)
_DESCRIPTION_PATTERNS = {
    "sagittal": re.compile(r"\bsag", re.IGNORECASE),
    "coronal": re.compile(r"\bcor", re.IGNORECASE),
    "axial": re.compile(r"\b(ax|tra)", re.IGNORECASE),
}


@dataclass(frozen=True, eq=False)
class Volume:
    """A series of slices.

    Attributes:
        array: ``(slices, rows, columns)``; uint8 for MRNet arrays, float32 otherwise.
        spacing: Millimetres between slices, rows and columns (NaN when unknown).
        plane: ``axial``, ``coronal``, ``sagittal`` or None when unknown.
        direction: ``(3, 3)`` direction cosines (rows of the matrix: along a row, i.e. the
            column index; along a column, i.e. the row index; the slice normal), in the
            DICOM patient frame (LPS), or None when unknown.
        source: The file or folder it was read from.
        description: The DICOM SeriesDescription, when there is one.
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = _NAN3
    plane: str | None = None
    direction: np.ndarray | None = field(default=None, repr=False)
    source: str = ""
    description: str | None = None

    @property
    def num_slices(self) -> int:
        return int(self.array.shape[0])

    @property
    def slice_shape(self) -> tuple[int, int]:
        return int(self.array.shape[1]), int(self.array.shape[2])


def plane_of_normal(normal: Sequence[float]) -> str:
    """The plane whose normal is closest to ``normal`` (x: left-right -> sagittal,
    y: anterior-posterior -> coronal, z: head-feet -> axial); works in LPS and RAS."""
    axis = int(np.argmax(np.abs(np.asarray(normal, dtype=float))))
    return ("sagittal", "coronal", "axial")[axis]


def plane_of_description(text: str | None) -> str | None:
    """The plane a SeriesDescription names (``SAG T2``, ``COR T1``, ``AX PD``, ``TRA``), or None."""
    if not text:
        return None
    found = [plane for plane, pattern in _DESCRIPTION_PATTERNS.items() if pattern.search(text)]
    return found[0] if len(found) == 1 else None


def _check_plane(plane: str | None) -> None:
    if plane is not None and plane not in PLANES:
        raise VolumeError(None, f"unknown plane {plane!r}; choose from {PLANES}")


def _check_array(path: Path, array: np.ndarray, what: str) -> np.ndarray:
    if array.ndim != 3:
        raise VolumeError(path, f"{what} has shape {tuple(array.shape)}; expected (slices, height, width)")
    if min(array.shape) == 0:
        raise VolumeError(path, f"{what} is empty (shape {tuple(array.shape)})")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise VolumeError(path, f"{what} has dtype {array.dtype}; expected integers or floats")
    return array


# ----------------------------------------------------------------------------- npy


def read_npy(path: str | Path, plane: str | None = None) -> Volume:
    """Read an MRNet-style ``.npy`` volume ``(slices, H, W)`` (no pickles are loaded).

    Raises:
        MissingFileError: No such file.
        ImageReadError: Not a readable ``.npy`` file (truncated, pickled objects).
        VolumeError: Not a 3-D numeric array.
    """
    path = Path(path)
    _check_plane(plane)
    if not path.is_file():
        raise MissingFileError(path, "volume file not found")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ImageReadError(path, f"not a readable .npy array ({type(err).__name__}: {err})") from err
    return Volume(_check_array(path, array, "array"), _NAN3, plane, None, str(path))


# ----------------------------------------------------------------------------- NIfTI


def read_nifti(path: str | Path, plane: str | None = None) -> Volume:
    """Read a NIfTI volume with nibabel; slices along the third voxel axis.

    Args:
        path: ``.nii`` or ``.nii.gz``.
        plane: The plane to record; default: from the affine's slice axis.

    Raises:
        MissingFileError: No such file.
        ImageReadError: nibabel cannot read it.
        VolumeError: Not 3-D (a 4-D file with one volume is accepted).
    """
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    path = Path(path)
    _check_plane(plane)
    if not path.is_file():
        raise MissingFileError(path, "volume file not found")
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
        zooms = [float(z) for z in image.header.get_zooms()[:3]]
        affine = np.asarray(image.affine, dtype=float)
    except (ImageFileError, OSError, EOFError, ValueError) as err:
        raise ImageReadError(path, f"not a readable NIfTI file ({type(err).__name__}: {err})") from err
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    _check_array(path, data, "NIfTI image")
    array = np.ascontiguousarray(np.transpose(data, (2, 1, 0))).astype(np.float32, copy=False)
    axes = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0, keepdims=True)
    direction = (axes * np.array([-1.0, -1.0, 1.0])[:, None]).T     # RAS -> LPS; rows: i, j, k axes
    plane = plane or plane_of_normal(direction[2])
    return Volume(array, (zooms[2], zooms[1], zooms[0]), plane, direction, str(path))


# ----------------------------------------------------------------------------- DICOM


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series found in a folder (headers only).

    Attributes:
        uid: SeriesInstanceUID.
        description: SeriesDescription ("" when missing).
        files: Its files.
        plane: From ImageOrientationPatient, else from the description, else None.
    """

    uid: str
    description: str
    files: tuple[Path, ...]
    plane: str | None


def _dicom_files(folder: Path) -> list[Path]:

    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        with path.open("rb") as fh:
            if looks_like_dicom(fh.read(132)):
                found.append(path)
    return found


def _header(path: Path) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, AttributeError) as err:
        raise ImageReadError(path, f"cannot read DICOM header ({type(err).__name__}: {err})") from err


def _floats(value: Any, n: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        out = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (n,) and np.all(np.isfinite(out)) else None


def _functional(ds: Any, item: str, keyword: str, frame: int | None = None) -> Any:
    """A value from a functional group: per-frame ``frame`` first, then the shared group."""
    groups = []
    if frame is not None and "PerFrameFunctionalGroupsSequence" in ds:
        groups.append(ds.PerFrameFunctionalGroupsSequence[frame])
    if "SharedFunctionalGroupsSequence" in ds and len(ds.SharedFunctionalGroupsSequence):
        groups.append(ds.SharedFunctionalGroupsSequence[0])
    for group in groups:
        if item in group and len(group[item].value) and keyword in group[item].value[0]:
            return group[item].value[0].get(keyword)
    return None


def _orientation(ds: Any) -> np.ndarray | None:
    value = ds.get("ImageOrientationPatient")
    if value is None:
        value = _functional(ds, "PlaneOrientationSequence", "ImageOrientationPatient", 0)
    iop = _floats(value, 6)
    if iop is None:
        return None
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    if np.linalg.norm(normal) < 1e-6:
        return None
    return np.stack([row, col, normal / np.linalg.norm(normal)])


def scan_dicom_folder(folder: str | Path) -> list[SeriesInfo]:
    """The DICOM series in ``folder`` (searched recursively), from their headers.

    Raises:
        MissingFileError: No such folder.
        ImageReadError: A DICOM header cannot be read.
        VolumeError: No DICOM files, or a file without SeriesInstanceUID.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(folder, "DICOM series folder not found")
    files = _dicom_files(folder)
    if not files:
        raise VolumeError(folder, "no DICOM files in this folder")
    groups: dict[str, list[tuple[Path, Any]]] = {}
    for path in files:
        ds = _header(path)
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not uid:
            raise VolumeError(path, "DICOM file has no SeriesInstanceUID")
        groups.setdefault(uid, []).append((path, ds))
    series = []
    for uid, members in groups.items():
        ds = members[0][1]
        description = str(ds.get("SeriesDescription", "") or "")
        direction = _orientation(ds)
        plane = plane_of_normal(direction[2]) if direction is not None else plane_of_description(description)
        series.append(SeriesInfo(uid, description, tuple(p for p, _ in members), plane))
    return series


def _describe(series: Sequence[SeriesInfo]) -> str:
    return "; ".join(f"{s.uid} ({s.description or 'no description'}, {s.plane or 'unknown plane'}, "
                     f"{len(s.files)} file(s))" for s in series)


def read_dicom_series(folder: str | Path, plane: str | None = None, series_uid: str | None = None) -> Volume:
    """Read the one DICOM series in ``folder`` (or the one of ``plane`` / ``series_uid``).

    Raises:
        MissingFileError: No such folder.
        VolumeError: No series, several series where one is expected (mixed series), slices
            of different sizes or orientations, two slices at one position, no slice order.
        ImageReadError: A file cannot be read or decoded.
    """
    folder = Path(folder)
    _check_plane(plane)
    series = scan_dicom_folder(folder)
    if series_uid is not None:
        series = [s for s in series if s.uid == series_uid]
        if not series:
            raise VolumeError(folder, f"no series {series_uid!r} in this folder")
    elif plane is not None:
        series = [s for s in series if s.plane == plane]
        if not series:
            raise VolumeError(folder, f"no {plane} series in this folder")
    if len(series) > 1:
        raise VolumeError(folder, f"mixed series in one folder: {_describe(series)}; keep one series per "
                                  "folder or choose one by plane/SeriesInstanceUID")
    return load_series(series[0])


def read_dicom_exam(folder: str | Path, planes: Sequence[str] = PLANES) -> dict[str, Volume]:
    """One volume per plane from a folder of an exam's DICOM series.

    Each series is assigned the plane of its orientation (or of its SeriesDescription).

    Raises:
        ExamError: A plane has no series.
        VolumeError: A plane has several series, or a series is inconsistent.
    """
    folder = Path(folder)
    series = scan_dicom_folder(folder)
    out = {}
    for plane in planes:
        _check_plane(plane)
        mine = [s for s in series if s.plane == plane]
        if not mine:
            found = ", ".join(sorted({s.plane or "unknown" for s in series}))
            raise ExamError(folder, f"exam has no {plane} series (found: {found})")
        if len(mine) > 1:
            raise VolumeError(folder, f"several {plane} series: {_describe(mine)}")
        out[plane] = load_series(mine[0])
    return out


def load_series(series: SeriesInfo) -> Volume:
    """Read and order the slices of one series (see the module docstring)."""
    import pydicom

    if len(series.files) == 1:
        ds = _header(series.files[0])
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            return _load_multiframe(series)
    headers = [(path, _header(path)) for path in series.files]
    for path, ds in headers:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise VolumeError(path, f"multi-frame file inside a series of {len(headers)} files; "
                                    "keep an enhanced multi-frame object in a folder of its own")
    first_path, first = headers[0]
    size = (int(first.get("Rows", 0) or 0), int(first.get("Columns", 0) or 0))
    for path, ds in headers:
        this = (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0))
        if this != size:
            raise VolumeError(path, f"slice is {this[0]} x {this[1]} pixels but {first_path.name} is "
                                    f"{size[0]} x {size[1]}: one series must have one slice size")
    direction = _orientation(first)
    positions = [_floats(ds.get("ImagePositionPatient"), 3) for _, ds in headers]
    order, slice_spacing = _order(series.files, direction, positions,
                                  [ds.get("InstanceNumber") for _, ds in headers], first)
    if direction is not None:
        for path, ds in headers:
            other = _orientation(ds)
            if other is None or np.abs(other - direction).max() > 1e-3:
                raise VolumeError(path, "slice orientation differs from the rest of the series")
    slices = []
    for index in order:
        path = series.files[index]
        ds = _read_full(path, pydicom)
        slices.append(_pixels(path, ds)[None])
    array = np.concatenate(slices, axis=0)
    row_spacing, col_spacing = _pixel_spacing(first)
    return Volume(array, (slice_spacing, row_spacing, col_spacing), series.plane, direction,
                  str(first_path.parent), series.description or None)


def _order(files: Sequence[Path], direction: np.ndarray | None, positions: list[np.ndarray | None],
           instance_numbers: list[Any], first: Any) -> tuple[list[int], float]:
    """Slice order and spacing: by position along the normal, else by InstanceNumber."""
    if len(files) == 1:
        return [0], _nominal_spacing(first)
    if direction is not None and all(p is not None for p in positions):
        along = np.array([float(np.dot(p, direction[2])) for p in positions])
        order = [int(i) for i in np.argsort(along, kind="stable")]
        steps = np.diff(along[order])
        if np.any(steps < 1e-3):
            k = int(np.argmin(steps))
            raise VolumeError(files[order[k + 1]], f"slice at the same position as {files[order[k]].name} "
                                                   f"({along[order[k]]:.3f} mm along the normal): duplicate "
                                                   "slice or two series with one SeriesInstanceUID")
        if steps.max() - steps.min() > 0.01 * max(float(np.median(steps)), 1e-6) + 1e-3:
            log.warning("%s: uneven slice spacing (%.3g to %.3g mm); using the median",
                        files[0].parent, steps.min(), steps.max())
        return order, float(np.median(steps))
    try:
        numbers = [int(n) for n in instance_numbers]
    except (TypeError, ValueError) as err:
        raise VolumeError(files[0].parent, "slices have neither ImagePositionPatient/ImageOrientationPatient "
                                           "nor InstanceNumber: cannot order them") from err
    if len(set(numbers)) != len(numbers):
        raise VolumeError(files[0].parent, "slices lack positions and repeat InstanceNumbers: cannot order them")
    return [int(i) for i in np.argsort(numbers, kind="stable")], _nominal_spacing(first)


def _nominal_spacing(ds: Any) -> float:
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = ds.get(keyword)
        if value is None:
            value = _functional(ds, "PixelMeasuresSequence", keyword, None)
        if value not in (None, ""):
            try:
                return float(value)
            except (TypeError, ValueError):
                continue
    return math.nan


def _pixel_spacing(ds: Any, frame: int | None = None) -> tuple[float, float]:
    value = ds.get("PixelSpacing")
    if value is None:
        value = _functional(ds, "PixelMeasuresSequence", "PixelSpacing", frame)
    spacing = _floats(value, 2)
    return (math.nan, math.nan) if spacing is None else (float(spacing[0]), float(spacing[1]))


def _read_full(path: Path, pydicom: Any) -> Any:
    from pydicom.errors import InvalidDicomError


    header = _header(path)
    check_decodable(path, transfer_syntax(header))
    try:
        return pydicom.dcmread(path, force=True)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError) as err:
        raise ImageReadError(path, f"cannot read DICOM ({type(err).__name__}: {err})") from err


def _pixels(path: Path, ds: Any) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut


    if "PixelData" not in ds:
        raise ImageReadError(path, "DICOM has no pixel data (file truncated?)")
    with decoding(path, "cannot decode DICOM pixel data"):      # decoder errors and native panics
        stored = ds.pixel_array
        values = apply_modality_lut(stored, ds)
    if str(ds.get("PhotometricInterpretation", "")).upper() not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageReadError(path, f"photometric interpretation {ds.get('PhotometricInterpretation')!r}; "
                                   "MR series are MONOCHROME2")
    return np.asarray(values, dtype=np.float32)


def _load_multiframe(series: SeriesInfo) -> Volume:
    import pydicom

    path = series.files[0]
    ds = _read_full(path, pydicom)
    frames = _pixels(path, ds)
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if frames.ndim == 2:
        frames = frames[None]
    if frames.shape[0] != count:
        raise ImageReadError(path, f"decoded {frames.shape[0]} frames, header says {count}")
    direction = _orientation(ds)
    positions = [_floats(_functional(ds, "PlanePositionSequence", "ImagePositionPatient", i), 3)
                 for i in range(count)]
    if direction is not None and all(p is not None for p in positions):
        along = np.array([float(np.dot(p, direction[2])) for p in positions])
        order = [int(i) for i in np.argsort(along, kind="stable")]
        steps = np.diff(along[order])
        if count > 1 and np.any(steps < 1e-3):
            raise VolumeError(path, "two frames at the same position: several stacks (or time points) in one "
                                    "multi-frame object are not a single volume")
        slice_spacing = float(np.median(steps)) if count > 1 else _nominal_spacing(ds)
    else:
        order, slice_spacing = list(range(count)), _nominal_spacing(ds)
        log.debug("%s: no per-frame positions; frames kept in stored order", path)
    row_spacing, col_spacing = _pixel_spacing(ds, 0)
    plane = series.plane
    if plane is None and direction is not None:
        plane = plane_of_normal(direction[2])
    return Volume(np.ascontiguousarray(frames[order]), (slice_spacing, row_spacing, col_spacing), plane,
                  direction, str(path), series.description or None)


# ----------------------------------------------------------------------------- dispatch


def read_volume(path: str | Path, plane: str | None = None) -> Volume:
    """Read a volume from ``.npy``, ``.nii``/``.nii.gz``, a DICOM file or a DICOM series folder.

    Raises:
        MissingFileError: No such file or folder.
        ImageReadError, VolumeError: See the readers.
    """
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        return read_dicom_series(path, plane=plane)
    if not path.exists():
        raise MissingFileError(path, "volume not found")
    if name.endswith(".npy"):
        return read_npy(path, plane)
    if name.endswith(".nii") or name.endswith(".nii.gz"):
        return read_nifti(path, plane)

    with path.open("rb") as fh:
        if not looks_like_dicom(fh.read(132)):
            raise ImageReadError(path, "not a .npy, NIfTI or DICOM file")
    ds = _header(path)
    description = str(ds.get("SeriesDescription", "") or "")
    direction = _orientation(ds)
    found = plane_of_normal(direction[2]) if direction is not None else plane_of_description(description)
    return load_series(SeriesInfo(str(ds.get("SeriesInstanceUID", "")), description, (path,), plane or found))
