"""Reading and writing NIfTI volumes (``.nii``, ``.nii.gz``) with nibabel.

A :class:`NiftiVolume` keeps what a prediction needs to go back into the input's space:
the voxel array, the affine (voxel -> scanner millimetres), the voxel spacing and the
header. :func:`write_nifti` writes an array with a reference volume's affine and header
(only the data type changes), atomically.

nibabel reads lazily: a truncated gzip stream or a short file only fails when the voxels
are decoded, so :func:`read_nifti` decodes them at once and translates every failure into
an :class:`~cxrlab.errors.ImageReadError` naming the file.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrlab.errors import ImageReadError, MissingFileError
from cxrlab.io.write import write_bytes_atomic

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class NiftiVolume:
    """One NIfTI image.

    Attributes:
        array: The voxels, ``(X, Y, Z)`` or ``(X, Y, Z, C)`` in file (voxel) order,
            scaled by the header's slope/intercept when it has them.
        affine: ``(4, 4)`` voxel index -> scanner millimetres (the sform, else the qform).
        spacing: Voxel size in millimetres along the first three axes.
        header: The nibabel header (kept so a written prediction carries it).
        path: The file read.
    """

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    header: Any
    path: Path | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)


def is_nifti(path: str | Path) -> bool:
    """True when the name ends in ``.nii`` or ``.nii.gz``."""
    name = Path(path).name.lower()
    return name.endswith(NIFTI_SUFFIXES)


def nifti_stem(path: str | Path) -> str:
    """The name without ``.nii`` / ``.nii.gz``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_nifti(path: str | Path, dtype: Any = np.float32) -> NiftiVolume:
    """Read a NIfTI-1/2 file fully.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        dtype: The array's type: ``np.float32`` (scaled intensities) or an integer type
            for label volumes (values are checked to be whole numbers).

    Raises:
        MissingFileError: No such file.
        ImageReadError: Empty, not NIfTI, truncated, corrupt, or (integer ``dtype``)
            holding non-integer values.
    """
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "NIfTI file not found")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    try:
        image = nib.load(str(path))
        if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
            raise ImageReadError(path, f"not a NIfTI image (nibabel read it as {type(image).__name__})")
        raw = np.asanyarray(image.dataobj)
    except ImageReadError:
        raise
    except (ImageFileError, EOFError, zlib.error, gzip.BadGzipFile, OSError, ValueError) as err:
        raise ImageReadError(path, f"cannot read as NIfTI (truncated or corrupt?): {type(err).__name__}: {err}") \
            from err
    if raw.ndim not in (3, 4):
        raise ImageReadError(path, f"expected a 3-D or 4-D volume, got shape {raw.shape}")
    if np.issubdtype(np.dtype(dtype), np.integer):
        if np.issubdtype(raw.dtype, np.floating):
            if not np.all(np.isfinite(raw)) or not np.array_equal(raw, np.round(raw)):
                raise ImageReadError(path, "a label volume must hold whole numbers; found fractional values")
        array = raw.astype(dtype)
    else:
        array = raw.astype(dtype, copy=False)
    header = image.header
    zooms = tuple(float(z) for z in header.get_zooms()[:3])
    affine = np.asarray(image.affine, dtype=np.float64)
    return NiftiVolume(array=np.ascontiguousarray(array), affine=affine, spacing=zooms, header=header, path=path)


def write_nifti(path: str | Path, array: np.ndarray, reference: NiftiVolume | None = None,
                affine: np.ndarray | None = None, spacing: tuple[float, float, float] | None = None) -> Path:
    """Write ``array`` as NIfTI-1 (gzip-compressed when the name ends in ``.gz``), atomically.

    With a ``reference`` the file gets the reference's affine and a copy of its header
    (sform/qform codes, units, description), with the data type of ``array`` and no
    intensity scaling, so label values are written exactly. Without one, ``affine``
    (default: ``diag(spacing)``) is used.

    Args:
        path: Target ``.nii`` or ``.nii.gz``.
        array: ``(X, Y, Z)`` or ``(X, Y, Z, C)``; ``bool`` is written as ``uint8``.
        reference: The volume whose space the array lives in (same first three dimensions).
        affine: The affine when there is no reference.
        spacing: Voxel size when neither is given (default 1 mm).

    Raises:
        ValueError: ``path`` is not a NIfTI name, or the array's grid is not the reference's.
    """
    import nibabel as nib

    path = Path(path)
    if not is_nifti(path):
        raise ValueError(f"{path}: a NIfTI file name ends in .nii or .nii.gz")
    array = np.asarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if reference is not None:
        if tuple(array.shape[:3]) != tuple(reference.array.shape[:3]):
            raise ValueError(f"{path}: array shape {array.shape} is not the reference grid "
                             f"{reference.array.shape[:3]} ({reference.path})")
        header = reference.header.copy()
        if not isinstance(header, nib.Nifti1Header) or isinstance(header, nib.Nifti2Header):
            header = nib.Nifti1Header.from_header(header)
        image = nib.Nifti1Image(array, reference.affine, header=header)
    else:
        if affine is None:
            affine = np.diag([*(spacing or (1.0, 1.0, 1.0)), 1.0])
        image = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
        image.header.set_xyzt_units("mm", "sec")
    image.header.set_data_dtype(array.dtype)
    image.header.set_slope_inter(1.0, 0.0)
    data = image.to_bytes()
    if path.name.lower().endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    write_bytes_atomic(path, data)
    return path
