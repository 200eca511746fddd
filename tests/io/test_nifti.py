"""NIfTI reading and writing: affine, spacing, header, exact labels, atomic writes, bad files."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from cxrlab.errors import ImageReadError, MissingFileError
from cxrlab.io.nifti import nifti_stem, read_nifti, write_nifti


def mni152_path() -> Path:
    """nilearn's MNI152 2009 T1 template (a real 1 mm brain shipped inside the package)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        pytest.skip("nilearn is not installed")
    path = Path(spec.origin).parent / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    if not path.is_file():
        pytest.skip(f"{path} is not shipped by this nilearn")
    return path


def test_mni152_read_matches_nibabel():
    import nibabel as nib

    path = mni152_path()
    volume = read_nifti(path)
    reference = nib.load(str(path))
    assert volume.shape == reference.shape
    np.testing.assert_allclose(volume.affine, reference.affine)
    assert volume.spacing == pytest.approx((1.0, 1.0, 1.0))
    np.testing.assert_array_equal(volume.array, np.asanyarray(reference.dataobj).astype(np.float32))


@pytest.mark.parametrize("name", ["x.nii.gz", "x.nii"])
def test_write_with_reference_keeps_affine_header_and_labels(tmp_path, name):
    affine = np.array([[-1.0, 0, 0, 10], [0, -1.5, 0, 20], [0, 0, 3.0, -30], [0, 0, 0, 1]])
    image = np.random.default_rng(0).normal(size=(6, 5, 4)).astype(np.float32)
    ref_path = write_nifti(tmp_path / f"ref_{name}", image, affine=affine)
    reference = read_nifti(ref_path)
    assert reference.spacing == pytest.approx((1.0, 1.5, 3.0))
    labels = np.random.default_rng(1).choice([0, 1, 2, 4], size=(6, 5, 4)).astype(np.uint8)
    out = write_nifti(tmp_path / name, labels, reference=reference)
    back = read_nifti(out, dtype=np.uint8)
    np.testing.assert_array_equal(back.array, labels)
    np.testing.assert_allclose(back.affine, affine)
    assert back.header.get_data_dtype() == np.uint8
    assert int(back.header["sform_code"]) == int(reference.header["sform_code"])
    assert not list(tmp_path.glob(".*.tmp"))          # no temporary file left behind


def test_write_refuses_other_grid(tmp_path):
    reference = read_nifti(write_nifti(tmp_path / "r.nii.gz", np.zeros((4, 4, 4), np.float32)))
    with pytest.raises(ValueError, match="reference grid"):
        write_nifti(tmp_path / "x.nii.gz", np.zeros((4, 4, 5), np.uint8), reference=reference)


def test_truncated_empty_missing_and_foreign_files(tmp_path):
    good = write_nifti(tmp_path / "good.nii.gz", np.arange(4096, dtype=np.float32).reshape(16, 16, 16))
    truncated = tmp_path / "cut.nii.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ImageReadError, match="cut.nii.gz"):
        read_nifti(truncated)
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        read_nifti(empty)
    foreign = tmp_path / "text.nii.gz"
    foreign.write_bytes(gzip.compress(b"not a nifti header at all" * 20))
    with pytest.raises(ImageReadError, match="text.nii.gz"):
        read_nifti(foreign)
    with pytest.raises(MissingFileError):
        read_nifti(tmp_path / "absent.nii.gz")


def test_label_dtype_rejects_fractions(tmp_path):
    path = write_nifti(tmp_path / "f.nii.gz", np.full((3, 3, 3), 1.5, np.float32))
    with pytest.raises(ImageReadError, match="whole numbers"):
        read_nifti(path, dtype=np.uint8)


def test_nifti_stem():
    assert nifti_stem("a/BraTS20_001.nii.gz") == "BraTS20_001"
    assert nifti_stem("b.nii") == "b"


def test_mni152_crop_and_zscore_with_a_pasted_lesion(tmp_path):
    """A real 1 mm T1 brain (nilearn's MNI152 2009) with a synthetic lesion: affine kept, box and z-scores exact."""
    from cxrlab.data.brain import preprocess, uncrop
    from cxrlab.data.datasets.brats import to_canonical

    mni = read_nifti(mni152_path())
    t1 = mni.array
    lesion = np.zeros(t1.shape, dtype=np.uint8)
    centre = np.array(t1.shape) // 2 + np.array([20, 10, 5])
    grid = np.ogrid[tuple(slice(0, s) for s in t1.shape)]
    lesion[sum((g - c) ** 2 for g, c in zip(grid, centre)) < 8 ** 2] = 4
    assert t1[lesion > 0].min() > 0               # inside the brain
    seg_path = write_nifti(tmp_path / "seg.nii.gz", lesion, reference=mni)
    seg = read_nifti(seg_path, dtype=np.uint8)
    np.testing.assert_allclose(seg.affine, mni.affine)
    image = np.stack([t1, t1 * 2.0, t1 + 5.0 * (t1 > 0), t1])
    prep = preprocess(image, to_canonical(seg.array, "2020"))
    nonzero = np.argwhere(t1 != 0)
    assert prep.box_start == tuple(nonzero.min(0)) and prep.box_end == tuple(nonzero.max(0) + 1)
    inside = prep.image[0] != 0
    for channel in prep.image:
        assert channel[inside].mean() == pytest.approx(0.0, abs=1e-3)
        assert channel[inside].std() == pytest.approx(1.0, abs=1e-3)
    assert int((prep.label == 3).sum()) == int((lesion == 4).sum())
    np.testing.assert_array_equal(uncrop(prep.label[0], prep), to_canonical(lesion, "2020"))
