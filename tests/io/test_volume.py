"""Volumes from .npy, NIfTI and DICOM series, on the MR files pydicom and pydicom-data ship."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from cxrlab.errors import ExamError, ImageReadError, MissingFileError, VolumeError
from cxrlab.io.volume import (plane_of_description, plane_of_normal, read_dicom_exam, read_dicom_series,
                              read_nifti, read_npy, read_volume)

PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
MR_SMALL = PYDICOM_TEST_FILES / "MR_small.dcm"
IOPS = {"axial": [1, 0, 0, 0, 1, 0], "coronal": [1, 0, 0, 0, 0, -1], "sagittal": [0, 1, 0, 0, 0, -1]}


def _write_series(folder: Path, n: int, *, step: float = 2.0, plane: str = "axial", base: Path = MR_SMALL,
                  uid: str | None = None, description: str = "", keep_position: bool = True) -> list[int]:
    """``n`` copies of a real MR file as one series, slice k at ``k * step`` mm along the normal
    and with pixel values shifted by ``100 * k``; files are named and numbered against that order.

    Returns:
        The offsets (k) in the order the reader must return them.
    """
    folder.mkdir(parents=True, exist_ok=True)
    source = pydicom.dcmread(base)
    series_uid = uid or generate_uid()
    iop = np.array(IOPS[plane], dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    pixels = source.pixel_array.astype(np.int16)
    names = np.random.default_rng(n).permutation(n)
    for k in range(n):
        ds = copy.deepcopy(source)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.SeriesDescription = description
        ds.ImageOrientationPatient = [float(v) for v in iop]
        if keep_position:
            ds.ImagePositionPatient = [float(v) for v in np.array([-80.0, -90.0, 5.0]) + k * step * normal]
        else:
            del ds.ImagePositionPatient
            del ds.ImageOrientationPatient
        ds.InstanceNumber = (n - k) if keep_position else k + 1   # against the position order
        ds.PixelData = (pixels + 100 * k).astype(np.int16).tobytes()
        ds.save_as(folder / f"IM{names[k]:04d}", enforce_file_format=True)
    return list(range(n))


def test_single_mr_file_reads_as_one_slice_with_its_spacing_and_plane():
    volume = read_volume(MR_SMALL)
    reference = pydicom.dcmread(MR_SMALL).pixel_array
    assert volume.array.shape == (1, 64, 64)
    np.testing.assert_array_equal(volume.array[0], reference.astype(np.float32))
    assert volume.spacing == pytest.approx((0.8, 0.3125, 0.3125))     # SliceThickness, PixelSpacing
    assert volume.plane == "axial"


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm",
                                  "MR_small_implicit.dcm", "MR_small_jp2klossless.dcm"])
def test_encodings_of_mr_small_read_identically(name):
    np.testing.assert_array_equal(read_volume(PYDICOM_TEST_FILES / name).array, read_volume(MR_SMALL).array)


def test_siemens_mr_file_spacing():
    volume = read_volume(get_testdata_file("MR-SIEMENS-DICOM-WithOverlays.dcm"))
    assert volume.array.shape == (1, 484, 484)
    assert volume.spacing == pytest.approx((4.0, 0.72314049586777, 0.72314049586777))
    assert volume.plane == "axial"


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_series_is_ordered_by_position_along_the_normal(tmp_path, plane):
    _write_series(tmp_path, 5, step=3.3, plane=plane)
    volume = read_dicom_series(tmp_path)
    base = pydicom.dcmread(MR_SMALL).pixel_array.astype(np.float32)
    offsets = [float(np.round((volume.array[i] - base).mean())) for i in range(5)]
    assert offsets == [0.0, 100.0, 200.0, 300.0, 400.0]
    assert volume.spacing == pytest.approx((3.3, 0.3125, 0.3125))
    assert volume.plane == plane


def test_series_without_positions_falls_back_to_instance_number(tmp_path):
    _write_series(tmp_path, 4, keep_position=False, description="SAG PD")
    volume = read_dicom_series(tmp_path)
    base = pydicom.dcmread(MR_SMALL).pixel_array.astype(np.float32)
    assert [float(np.round((s - base).mean())) for s in volume.array] == [0.0, 100.0, 200.0, 300.0]
    assert volume.spacing[0] == pytest.approx(0.8)     # SliceThickness: no positions to measure
    assert volume.plane == "sagittal"                  # from the SeriesDescription


@pytest.mark.parametrize("name", ["emri_small.dcm", "emri_small_RLE.dcm", "emri_small_big_endian.dcm",
                                  "emri_small_jpeg_ls_lossless.dcm", "emri_small_jpeg_2k_lossless.dcm"])
def test_enhanced_multiframe_mr_keeps_its_frames(name):
    volume = read_volume(get_testdata_file(name))
    reference = pydicom.dcmread(get_testdata_file("emri_small.dcm")).pixel_array
    assert volume.array.shape == (10, 64, 64)
    np.testing.assert_array_equal(volume.array, reference.astype(np.float32))
    assert volume.spacing[0] == pytest.approx(1.2)      # SpacingBetweenSlices
    assert math.isnan(volume.spacing[1])                 # the file keeps no PixelSpacing


def test_truncated_multiframe_raises_image_read_error():
    with pytest.raises(ImageReadError, match="emri_small_jpeg_2k_lossless_too_short"):
        read_volume(get_testdata_file("emri_small_jpeg_2k_lossless_too_short.dcm"))


def test_enhanced_multiframe_frames_are_sorted_by_per_frame_position(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("emri_small.dcm"))
    order = [3, 7, 0, 9, 1, 5, 2, 8, 6, 4]            # frame i lies at position order[i]
    shared = Dataset()
    orientation, measures = Dataset(), Dataset()
    orientation.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    measures.PixelSpacing = [0.5, 0.6]
    measures.SliceThickness = 1.0
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    shared.PixelMeasuresSequence = DicomSequence([measures])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames = []
    for position in order:
        item, plane_position = Dataset(), Dataset()
        plane_position.ImagePositionPatient = [10.0 + 1.5 * position, 0.0, 0.0]
        item.PlanePositionSequence = DicomSequence([plane_position])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    ds.save_as(tmp_path / "enhanced.dcm")
    volume = read_volume(tmp_path / "enhanced.dcm")
    stored = pydicom.dcmread(get_testdata_file("emri_small.dcm")).pixel_array
    # IOP (0,1,0 / 0,0,-1): the normal is -x, so slices run from the largest x to the smallest
    np.testing.assert_array_equal(volume.array, stored[np.argsort(order)[::-1]].astype(np.float32))
    assert volume.spacing == pytest.approx((1.5, 0.5, 0.6))
    assert volume.plane == "sagittal"


# ------------------------------------------------------------------------------- bad input


def test_mixed_series_in_one_folder_is_refused(tmp_path):
    _write_series(tmp_path / "a", 3)
    _write_series(tmp_path / "b", 2, plane="coronal")
    with pytest.raises(VolumeError, match="mixed series"):
        read_dicom_series(tmp_path)
    assert read_dicom_series(tmp_path, plane="coronal").num_slices == 2


def test_slice_of_another_size_names_the_file(tmp_path):
    uid = generate_uid()
    _write_series(tmp_path, 3, uid=uid)
    other = pydicom.dcmread(get_testdata_file("MR-SIEMENS-DICOM-WithOverlays.dcm"))
    other.SeriesInstanceUID = uid
    other.save_as(tmp_path / "zz_big.dcm")
    with pytest.raises(VolumeError, match=r"zz_big\.dcm.*484 x 484"):
        read_dicom_series(tmp_path)


def test_two_slices_at_one_position_are_refused(tmp_path):
    _write_series(tmp_path, 3, step=0.0)
    with pytest.raises(VolumeError, match="same position"):
        read_dicom_series(tmp_path)


def test_folder_without_dicom_and_missing_paths(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(VolumeError, match="no DICOM files"):
        read_dicom_series(tmp_path)
    with pytest.raises(MissingFileError):
        read_volume(tmp_path / "nope.npy")
    with pytest.raises(ImageReadError, match="not a .npy, NIfTI or DICOM"):
        read_volume(tmp_path / "notes.txt")


def test_npy_bad_shapes_and_bytes(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros((256, 256), np.uint8))
    with pytest.raises(VolumeError, match=r"flat\.npy.*\(256, 256\)"):
        read_npy(tmp_path / "flat.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ImageReadError, match="objects.npy"):
        read_npy(tmp_path / "objects.npy")
    (tmp_path / "cut.npy").write_bytes((tmp_path / "flat.npy").read_bytes()[:100])
    with pytest.raises(ImageReadError, match="cut.npy"):
        read_npy(tmp_path / "cut.npy")
    np.save(tmp_path / "good.npy", np.arange(2 * 4 * 5, dtype=np.uint8).reshape(2, 4, 5))
    volume = read_npy(tmp_path / "good.npy", plane="coronal")
    assert volume.array.dtype == np.uint8 and volume.slice_shape == (4, 5) and volume.plane == "coronal"


def test_exam_folder_gives_one_series_per_plane(tmp_path):
    _write_series(tmp_path / "s1", 3, plane="sagittal")
    _write_series(tmp_path / "s2", 4, plane="coronal")
    _write_series(tmp_path / "s3", 2, plane="axial")
    exam = read_dicom_exam(tmp_path)
    assert {p: v.num_slices for p, v in exam.items()} == {"axial": 2, "coronal": 4, "sagittal": 3}
    _write_series(tmp_path / "s4", 2, plane="axial")
    with pytest.raises(VolumeError, match="several axial series"):
        read_dicom_exam(tmp_path)


def test_exam_folder_missing_a_plane(tmp_path):
    _write_series(tmp_path / "s1", 3, plane="sagittal")
    with pytest.raises(ExamError, match="no axial series"):
        read_dicom_exam(tmp_path)


# ------------------------------------------------------------------------------- NIfTI


def test_nifti_slices_spacing_and_plane(tmp_path):
    import nibabel as nib

    data = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)     # (i, j, k)
    affine = np.array([[0, 0, -3.0, 0], [0.5, 0, 0, 0], [0, -0.7, 0, 0], [0, 0, 0, 1]])   # k along x: sagittal
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "knee.nii.gz")
    volume = read_nifti(tmp_path / "knee.nii.gz")
    assert volume.array.shape == (4, 5, 6)
    np.testing.assert_array_equal(volume.array[2], data[:, :, 2].T.astype(np.float32))
    assert volume.spacing == pytest.approx((3.0, 0.7, 0.5))
    assert volume.plane == "sagittal"
    (tmp_path / "bad.nii").write_bytes(b"not nifti at all" * 30)
    with pytest.raises(ImageReadError, match="bad.nii"):
        read_nifti(tmp_path / "bad.nii")


def test_plane_helpers():
    assert plane_of_normal([0.1, 0.2, -0.97]) == "axial"
    assert plane_of_normal([-0.9, 0.3, 0.1]) == "sagittal"
    assert plane_of_description("COR T1 FSE") == "coronal"
    assert plane_of_description("Ax PD fat sat") == "axial"
    assert plane_of_description("3D localizer") is None
