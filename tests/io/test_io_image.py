"""read_image / read_mask: formats, DICOM codecs and intensities, metadata, bad input."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageFile
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxrlab.data.transforms import PreprocessConfig, preprocess
from cxrlab.errors import (
    ImageReadError,
    ImageTooLargeError,
    MissingFileError,
    UnsupportedTransferSyntaxError,
)
from cxrlab.io import ImageMeta, XrayImage, detect_format, read_image, read_mask

PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


@pytest.fixture(scope="module")
def rg1(rg1_dir: Path) -> dict[str, XrayImage]:
    """RG1 decoded once per module: uncompressed and lossless JPEG 2000."""
    return {name: read_image(rg1_dir / f"RG1_{name}.dcm") for name in ("UNCR", "J2KR")}


def _small_dicom(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2",
                 bits_stored: int = 12, preamble: bool = True, **elements) -> Path:
    """A tiny native little-endian DICOM written with pydicom."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    if preamble:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR declares width x height but holds almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                     + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))
    return path


# ----------------------------------------------------------------------------- RG1 radiograph

def test_rg1_uncompressed_and_jpeg2000_decode_identically(rg1):
    assert rg1["UNCR"].pixels.shape == (1955, 1841)
    assert rg1["UNCR"].pixels.dtype == np.float32
    np.testing.assert_array_equal(rg1["UNCR"].pixels, rg1["J2KR"].pixels)


def test_rg1_metadata(rg1):
    meta = rg1["UNCR"].meta
    assert isinstance(meta, ImageMeta)
    assert meta.format == "dicom"
    assert meta.shape == (1955, 1841)
    assert meta.photometric == "MONOCHROME1"
    assert meta.transfer_syntax == "1.2.840.10008.1.2.1"
    assert rg1["J2KR"].meta.transfer_syntax == "1.2.840.10008.1.2.4.90"
    assert meta.bits_stored == 15
    assert meta.view_position == "PA"
    assert meta.patient_id == "9RG1"
    assert meta.study_id == "1.3.6.1.4.1.5962.1.2.9.20040826185059.5457"
    assert meta.sop_instance_uid == "1.3.6.1.4.1.5962.1.1.9.1.1.20040826185059.5457"
    assert meta.pixel_spacing is None  # the file stores PixelSpacing 0\0: treated as absent
    assert meta.path.endswith("RG1_UNCR.dcm")


def test_monochrome1_is_inverted_over_the_nominal_range(rg1, rg1_dir):
    stored = pydicom.dcmread(rg1_dir / "RG1_UNCR.dcm").pixel_array
    # BitsStored 15, no rescale: the nominal range is [0, 32767]
    np.testing.assert_array_equal(rg1["UNCR"].pixels, 32767 - stored.astype(np.float32))


def test_rg1_lungs_darker_than_spine_after_preprocess(rg1):
    """Regions chosen from the preprocessed PA image (fractions of the square side):
    lung fields rows 0.20-0.50 and columns 0.20-0.35 (patient's right lung) and
    0.62-0.78 (left lung); spine/mediastinum rows 0.20-0.70, columns 0.46-0.54."""
    size = 128
    for image in rg1.values():
        img = preprocess(image.pixels, PreprocessConfig(size=size)).astype(np.float64)

        def region(y0, y1, x0, x1):
            return img[int(y0 * size):int(y1 * size), int(x0 * size):int(x1 * size)].mean()

        spine = region(0.20, 0.70, 0.46, 0.54)
        for lung in (region(0.20, 0.50, 0.20, 0.35), region(0.20, 0.50, 0.62, 0.78)):
            assert lung + 60 < spine


# --------------------------------------------------------------- other DICOM codecs and cases

@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm", "MR_small_implicit.dcm",
                                  "MR_small_bigendian.dcm"])
def test_lossless_syntaxes_match_uncompressed(name):
    reference = read_image(PYDICOM_TEST_FILES / "MR_small.dcm").pixels
    image = read_image(PYDICOM_TEST_FILES / name)
    np.testing.assert_array_equal(image.pixels, reference)
    assert image.meta.photometric == "MONOCHROME2"


def test_jpeg_baseline_dicom_is_close_to_its_decompressed_copy(rg1_dir):
    image = read_image(PYDICOM_TEST_FILES / "SC_rgb_dcmtk_+eb+cy+n1.dcm")
    reference = read_image(rg1_dir / "SC_rgb_dcmtk_ebcyn1_dcmd.dcm")
    assert image.meta.transfer_syntax == "1.2.840.10008.1.2.4.50"
    assert image.meta.photometric == "YBR_FULL"
    assert image.pixels.shape == (100, 100)
    assert np.abs(image.pixels - reference.pixels).max() < 2.0


def test_jpeg_lossless_dicom(rg1_dir):
    image = read_image(rg1_dir / "JPEG-LL.dcm")
    assert image.meta.transfer_syntax == "1.2.840.10008.1.2.4.70"
    stored = pydicom.dcmread(rg1_dir / "JPEG-LL.dcm").pixel_array
    np.testing.assert_array_equal(image.pixels, stored.astype(np.float32))


def test_rgb_dicom_converted_to_gray(rg1_dir):
    rgb = pydicom.dcmread(rg1_dir / "SC_rgb.dcm").pixel_array.astype(np.float32)
    image = read_image(rg1_dir / "SC_rgb.dcm")
    expected = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    assert image.pixels.shape == (100, 100)
    np.testing.assert_allclose(image.pixels, expected, atol=1e-3)


def test_multiframe_dicom_refused(rg1_dir):
    with pytest.raises(ImageReadError, match="multi-frame DICOM \\(2 frames\\)"):
        read_image(rg1_dir / "SC_rgb_2frame.dcm")


def test_modality_lut_and_monochrome1_with_rescale(tmp_path):
    stored = np.arange(12, dtype=np.uint16).reshape(3, 4) * 300
    for photometric in ("MONOCHROME2", "MONOCHROME1"):
        path = _small_dicom(tmp_path / f"{photometric}.dcm", stored, photometric=photometric,
                            RescaleSlope=2, RescaleIntercept=-100)
        values = 2.0 * stored - 100
        if photometric == "MONOCHROME1":
            lo, hi = -100.0, 2.0 * 4095 - 100  # 12 bits stored through the rescale
            values = lo + hi - values
        np.testing.assert_allclose(read_image(path).pixels, values)


def test_dicom_without_preamble_detected_by_content(tmp_path):
    stored = np.arange(20, dtype=np.uint16).reshape(4, 5)
    path = _small_dicom(tmp_path / "nopreamble.img", stored, preamble=False,
                        ViewPosition="AP", PatientID="p1", ImagerPixelSpacing=[0.2, 0.15])
    assert path.read_bytes()[128:132] != b"DICM"
    image = read_image(path)
    assert image.meta.format == "dicom"
    assert image.meta.transfer_syntax == "1.2.840.10008.1.2"
    assert image.meta.view_position == "AP" and image.meta.patient_id == "p1"
    assert image.meta.pixel_spacing == (0.2, 0.15)
    np.testing.assert_array_equal(image.pixels, stored)


# ----------------------------------------------------------------------------- PNG and JPEG

def test_png_8_and_16_bit_exact_and_detected_by_content(tmp_path):
    rng = np.random.default_rng(0)
    img8 = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    img16 = rng.integers(0, 65536, (30, 40), dtype=np.uint16)
    Image.fromarray(img8).save(tmp_path / "a.png")
    Image.fromarray(img16).save(tmp_path / "b.png")
    (tmp_path / "b_named.dcm").write_bytes((tmp_path / "b.png").read_bytes())
    a, b = read_image(tmp_path / "a.png"), read_image(tmp_path / "b_named.dcm")
    np.testing.assert_array_equal(a.pixels, img8)
    np.testing.assert_array_equal(b.pixels, img16)
    assert (a.meta.format, a.meta.photometric, a.meta.bits_stored) == ("png", "L", 8)
    assert (b.meta.format, b.meta.bits_stored, b.meta.shape) == ("png", 16, (30, 40))
    assert b.meta.transfer_syntax is None
    assert a.pixels.flags.writeable and a.pixels.dtype == np.float32


def test_rgb_png_and_jpeg(tmp_path):
    rgb = np.zeros((20, 30, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "d.jpg", quality=95)
    png, jpeg = read_image(tmp_path / "c.png"), read_image(tmp_path / "d.jpg")
    np.testing.assert_allclose(png.pixels, 0.299 * 200 + 0.587 * 100 + 0.114 * 50, atol=1e-3)
    assert jpeg.meta.format == "jpeg" and jpeg.meta.photometric == "L"
    assert np.abs(jpeg.pixels - 200).max() <= 2


def test_read_mask_nonzero_inside(tmp_path):
    mask = np.zeros((10, 12), dtype=np.uint8)
    mask[2:5, 3:9] = 255
    mask[8, 0] = 1
    Image.fromarray(mask).save(tmp_path / "m.png")
    result = read_mask(tmp_path / "m.png")
    assert result.dtype == np.bool_
    np.testing.assert_array_equal(result, mask > 0)


def test_read_mask_does_not_invert_monochrome1(tmp_path):
    stored = np.zeros((4, 4), dtype=np.uint16)
    stored[1, 2] = 1
    path = _small_dicom(tmp_path / "mask.dcm", stored, photometric="MONOCHROME1")
    np.testing.assert_array_equal(read_mask(path), stored > 0)


# ----------------------------------------------------------------------------- bad input

def test_missing_file(tmp_path):
    with pytest.raises(MissingFileError, match="nope.dcm: file not found"):
        read_image(tmp_path / "nope.dcm")
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "nope.dcm")
    with pytest.raises(MissingFileError, match="directory"):
        read_image(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.dcm: file is empty"):
        read_image(tmp_path / "empty.dcm")


def test_not_an_image(tmp_path):
    (tmp_path / "garbage.png").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "notes.png").write_text("ImageId,EncodedPixels\n")
    for name in ("garbage.png", "notes.png"):
        with pytest.raises(ImageReadError, match=f"{name}: not a DICOM, PNG or JPEG"):
            read_image(tmp_path / name)
    assert detect_format(PYDICOM_TEST_FILES / "MR_small.dcm") == "dicom"


@pytest.mark.parametrize("keep", [5_000_000, 7_000_000, 1000])
def test_truncated_uncompressed_dicom(tmp_path, rg1_dir, keep):
    data = (rg1_dir / "RG1_UNCR.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:keep])
    with pytest.raises(ImageReadError, match="cut.dcm: .*(truncated|no Rows)"):
        read_image(tmp_path / "cut.dcm")


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
def test_truncated_jpeg2000_dicom(tmp_path, rg1_dir):
    data = (rg1_dir / "RG1_J2KR.dcm").read_bytes()
    (tmp_path / "cut_j2k.dcm").write_bytes(data[:len(data) // 2])
    with pytest.raises(ImageReadError, match="cut_j2k.dcm"):
        read_image(tmp_path / "cut_j2k.dcm")


@pytest.mark.parametrize("uid", ["1.2.840.10008.1.2.4.100", "1.2.3.4.5"])
def test_unsupported_transfer_syntax(tmp_path, uid):
    ds = pydicom.dcmread(PYDICOM_TEST_FILES / "MR_small_jp2klossless.dcm")
    ds.file_meta.TransferSyntaxUID = uid
    ds.save_as(tmp_path / "odd.dcm")
    with pytest.raises(UnsupportedTransferSyntaxError, match=f"odd.dcm: transfer syntax {uid}"):
        read_image(tmp_path / "odd.dcm")


def test_transfer_syntax_without_installed_codec(tmp_path, monkeypatch):
    class _NoPlugin:
        is_available = False
        missing_dependencies = ["gdcm - requires gdcm>=3.0.10"]

    monkeypatch.setattr("cxrlab.io.dicom.get_decoder", lambda uid: _NoPlugin())
    with pytest.raises(UnsupportedTransferSyntaxError, match="codec that is not installed.*gdcm"):
        read_image(PYDICOM_TEST_FILES / "MR_small_jpeg_ls_lossless.dcm")


def test_dicom_without_image(tmp_path):
    with pytest.raises(ImageReadError, match="no Rows/Columns"):
        read_image(PYDICOM_TEST_FILES / "ExplVR_LitEndNoMeta.dcm")


def test_too_large_dicom_refused_before_decoding(tmp_path):
    path = _small_dicom(tmp_path / "huge.dcm", np.zeros((2, 2), dtype=np.uint16))
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = 20000, 20000  # header promises 400 M pixels; only 8 bytes stored
    ds.save_as(path)
    with pytest.raises(ImageTooLargeError, match="20000 x 20000 = 400000000 pixels"):
        read_image(path)


def test_too_large_real_image_with_small_limit(rg1_dir):
    with pytest.raises(ImageTooLargeError, match="above the limit of 1000000"):
        read_image(rg1_dir / "RG1_UNCR.dcm", max_pixels=1_000_000)


def test_too_large_png_headers(tmp_path):
    with pytest.raises(ImageTooLargeError, match="huge.png"):
        read_image(_png_header_only(tmp_path / "huge.png", 20000, 20000))  # Pillow bomb limit
    with pytest.raises(ImageTooLargeError, match="10000 x 12000 = 120000000 pixels"):
        read_image(_png_header_only(tmp_path / "big.png", 12000, 10000))  # our limit


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
@pytest.mark.parametrize("fraction", [0.3, 0.7])
def test_truncated_png_and_jpeg(tmp_path, fmt, fraction):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    full = tmp_path / f"full.{fmt}"
    Image.fromarray(img).save(full, format=fmt.upper())
    data = full.read_bytes()
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(ImageReadError, match=f"cut.{fmt}: truncated or corrupt {fmt.upper()}"):
        read_image(cut)


def test_png_missing_end_and_bad_crc(tmp_path):
    img = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    Image.fromarray(img).save(tmp_path / "full.png")
    data = bytearray((tmp_path / "full.png").read_bytes())
    (tmp_path / "no_end.png").write_bytes(bytes(data[:-12]))  # IEND chunk dropped
    data[60] ^= 0xFF  # a byte inside IDAT: its CRC no longer matches
    (tmp_path / "bad_crc.png").write_bytes(bytes(data))
    for name in ("no_end.png", "bad_crc.png"):
        with pytest.raises(ImageReadError, match=name):
            read_image(tmp_path / name)
