"""JPEG scans that end early (issue 13): refused, while every valid JPEG at hand still reads.

libjpeg-turbo fills the blocks of a scan that ends before its frame is complete and only
warns; :func:`cxrlab.io.jpeg.check_scans_complete` decodes once more with bytes after each
scan and :func:`cxrlab.io.jpeg.check_restart_count` counts RSTn markers. The valid files
are the JPEGs the installed packages ship, Pillow/OpenCV encodings (progressive, optimized
tables, chroma subsampling, restart intervals) and the JPEG DICOMs pydicom ships.
"""

from __future__ import annotations

import importlib.util
import io
import struct
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames

from cxrlab.errors import ImageReadError
from cxrlab.io import read_image
from cxrlab.io.jpeg import scan_ends

EARLY_END = "JPEG scan data ends before all the blocks its frame header declares"


def _package_files(package: str, folder: str) -> list[Path]:
    """``*.jpg`` in a folder of an installed package (found without importing it)."""
    spec = importlib.util.find_spec(package)
    roots = spec.submodule_search_locations if spec is not None else None
    return sorted(Path(roots[0], folder).glob("*.jpg")) if roots else []


SHIPPED = (_package_files("matplotlib", "mpl-data/sample_data") + _package_files("skimage", "data")
           + _package_files("sklearn", "datasets/images"))
#: JPEG baseline (RGB, YBR, APP14), extended (12-bit) and lossless (SV1) DICOMs of pydicom.
DICOMS = ("SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_jpeg_app14_dcmd.dcm", "SC_jpeg_no_color_transform.dcm",
          "SC_rgb_small_odd_jpeg.dcm", "JPGExtended.dcm", "SC_rgb_jpeg_gdcm.dcm")


def _phantom(rows: int = 120, cols: int = 150) -> np.ndarray:
    y, x = np.mgrid[0:rows, 0:cols]
    noise = np.random.default_rng(0).normal(0, 12, (rows, cols))
    return np.clip(100 + 60 * np.sin(x / 9.0) * np.cos(y / 13.0) + noise, 0, 255).astype(np.uint8)


def _pillow_jpeg(array: np.ndarray, **params) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", **params)
    return buffer.getvalue()


def _read(tmp_path: Path, data: bytes, name: str = "x.jpg"):
    path = tmp_path / name
    path.write_bytes(data)
    return read_image(path)


def test_the_jpegs_installed_packages_ship_are_read():
    assert len(SHIPPED) >= 5
    for path in SHIPPED:
        with Image.open(path) as image:
            assert read_image(path).pixels.shape == image.size[::-1], path


@pytest.mark.parametrize("params", [{}, {"progressive": True}, {"optimize": True}, {"quality": 100, "subsampling": 0},
                                    {"subsampling": 2, "quality": 60}])
def test_encoder_variants_are_read_exactly(tmp_path, params):
    gray = _phantom()
    colour = np.stack([gray, gray[::-1], gray[:, ::-1]], axis=-1)
    for array in (gray, colour):
        data = _pillow_jpeg(array, **params)
        with Image.open(io.BytesIO(data)) as image:
            expected = np.asarray(image.convert("L") if array.ndim == 2 else image.convert("RGB"), np.float32)
        pixels = _read(tmp_path, data).pixels
        if array.ndim == 2:
            np.testing.assert_array_equal(pixels, expected)
        else:
            assert pixels.shape == array.shape[:2]


@pytest.mark.parametrize("edit", ["taller", "wider", "eoi-mid-scan", "eoi-mid-progressive"])
def test_a_scan_ending_early_is_refused(tmp_path, edit):
    data = bytearray(_pillow_jpeg(_phantom(), quality=90, progressive=edit.endswith("progressive")))
    sof = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
    lines, samples = struct.unpack(">HH", data[sof + 5:sof + 9])
    if edit == "taller":
        data[sof + 5:sof + 7] = struct.pack(">H", lines + 8)
    elif edit == "wider":
        data[sof + 7:sof + 9] = struct.pack(">H", samples + 8)
    else:
        ends = scan_ends(bytes(data))
        assert (len(ends) == 1) == (edit == "eoi-mid-scan")  # progressive: several scans
        data = data[:ends[0] - 40] + b"\xff\xd9"  # the first scan loses its last 40 bytes
    with pytest.raises(ImageReadError, match=f"x.jpg: {EARLY_END}"):
        _read(tmp_path, bytes(data))


def test_restart_markers_are_counted(tmp_path):
    colour = np.stack([_phantom(), _phantom()[::-1], _phantom()[:, ::-1]], axis=-1)
    for array in (_phantom(), colour):
        ok, encoded = cv2.imencode(".jpg", array, [cv2.IMWRITE_JPEG_RST_INTERVAL, 2])
        data = encoded.tobytes()
        assert _read(tmp_path, data).pixels.shape == array.shape[:2]
        # cut where a restart interval ends: the decoder skips the probe bytes looking for RSTn
        cut = data[:data.find(b"\xff\xd3")] + b"\xff\xd9"
        with pytest.raises(ImageReadError, match=r"x.jpg: JPEG scan holds \d+ restart markers, its \d+ MCUs"):
            _read(tmp_path, cut)


@pytest.mark.parametrize("name", DICOMS)
def test_jpeg_dicoms_read_and_their_frame_cut_short_is_refused(tmp_path, name):
    source = get_testdata_file(name)
    expected = read_image(source).pixels
    ds = pydicom.dcmread(source)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    end = scan_ends(frame)[-1]
    ds.PixelData = encapsulate([frame[:end - (end - frame.find(b"\xff\xda")) // 3] + b"\xff\xd9"])
    path = tmp_path / name
    ds.save_as(path)
    with pytest.raises(ImageReadError, match=f"{name}: .*scan data ends"):
        read_image(path)
    assert expected.shape[:2] == (ds.Rows, ds.Columns)
