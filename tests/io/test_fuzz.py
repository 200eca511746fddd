"""Fuzz suite of the input path (issue 13): mutations of real DICOMs, PNGs and JPEGs.

A seeded, bounded sample of :mod:`cxrlab.data.fuzzing` cases runs through
``read_image -> preprocess -> to_tensor`` in child processes under ``RLIMIT_AS`` and a
per-case time limit; every case must end in a cxrlab error naming the file or in a read
that passes the consistency checks (and a case built to be refused must be refused). The
long run is ``scripts/fuzz.py`` (see ``benchmarks/README.md``).
"""

from __future__ import annotations

import io
import os
import random
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from cxrlab.data.transforms import PreprocessConfig, preprocess
from cxrlab.errors import ImageReadError, ImageTooLargeError, InputError
from cxrlab.io import read_image
from cxrlab.data.fuzzing import (
    ACCEPTABLE,
    CLASSES,
    FuzzCase,
    _raw_ds,
    format_table,
    gen_dicom_deflate_bomb,
    generate_cases,
    run_cases,
    summarize,
)
from cxrlab.io.guard import decoding

SAMPLE_SIZE = 320
SEED = 13
MAX_PIXELS = 2_000_000
MEMORY_MB = 768
#: JPEG scans that end early (an EOI marker mid-scan, a frame header promising more lines
#: or columns than the scan holds): libjpeg-turbo fills the missing blocks with a warning
#: only, so :func:`cxrlab.io.jpeg.check_scans_complete` probes for them.
JPEG_EARLY_END = ("jpeg-header-taller", "jpeg-header-wider", "jpeg-header-eoi-mid-scan")


@pytest.fixture(scope="module")
def sample():
    cases = generate_cases(SAMPLE_SIZE, seed=SEED, max_pixels=MAX_PIXELS)
    return cases, run_cases(cases, memory_mb=MEMORY_MB, case_timeout_s=30.0,
                            max_pixels=MAX_PIXELS, batch=SAMPLE_SIZE)


def test_every_mutation_class_is_in_the_sample(sample):
    cases, _ = sample
    families = {case.family for case in cases}
    assert families == set(CLASSES)
    assert sum(case.must_fail for case in cases) > SAMPLE_SIZE // 2
    assert sum(case.must_read for case in cases) >= 20


def test_sample_ends_in_cxrlab_errors_or_checked_reads(sample):
    cases, results = sample
    bad = [r for r in results if r.outcome not in ACCEPTABLE]
    table = format_table(summarize(results))
    assert not bad, table + "\n" + "\n".join(f"{r.case_id} {r.outcome}: {r.detail}" for r in bad)
    outcomes = {r.outcome for r in results}
    assert {"ok", "cxrlab-error"} <= outcomes


def test_jpeg_scan_ending_early_is_refused(sample):
    _, results = sample
    early = [r for r in results if r.kind in JPEG_EARLY_END]
    assert {r.kind for r in early} == set(JPEG_EARLY_END)
    assert all(r.outcome == "cxrlab-error" and "JPEG scan data ends before" in r.detail
               for r in early), [(r.kind, r.detail) for r in early]


def test_runner_reports_a_silent_accept_and_a_memory_limit(tmp_path):
    """The harness itself can fail: a valid file marked must_fail is a silent accept."""
    valid = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    cases = [FuzzCase("a", "dicom-valid", "MR_small.dcm", valid, must_fail=True),
             FuzzCase("b", "dicom-valid", "MR_small.dcm", valid, must_read=True)]
    outcomes = [r.outcome for r in run_cases(cases, max_pixels=MAX_PIXELS)]
    assert outcomes == ["silent-accept", "ok"]
    # 10 MB of address space on top of the imports cannot hold a 2,000 x 1,000 phantom
    big = FuzzCase("c", "png-valid", "generated", _png(np.full((2000, 1000), 7, np.uint8)))
    assert run_cases([big], memory_mb=10, max_pixels=MAX_PIXELS)[0].outcome == "memory"


# --------------------------------------------------------------------------- single cases


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def test_guard_turns_a_real_rust_panic_into_an_image_read_error():
    import pydicom
    from pydicom.encaps import generate_frames
    from rle.rle import decode_frame

    ds = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    with pytest.raises(ImageReadError, match=r"x.dcm: decoding: the native decoder panicked"):
        with decoding("x.dcm", "decoding"):
            decode_frame(frame, 10 * 10, 16, "<")  # Rows x Columns smaller than the data


def test_guard_lets_cxrlab_errors_and_memory_errors_through():
    with pytest.raises(ImageTooLargeError):
        with decoding("x.png", "decoding"):
            raise ImageTooLargeError("x.png", "too large")
    with pytest.raises(MemoryError):
        with decoding("x.png", "decoding"):
            raise MemoryError
    with pytest.raises(ImageReadError, match="x.png: decoding: KeyError: 'LUTData'"):
        with decoding("x.png", "decoding"):
            raise KeyError("LUTData")


def test_fifo_and_devices_are_not_regular_files(tmp_path):
    fifo = tmp_path / "pipe.dcm"
    os.mkfifo(fifo)
    errors = []
    reader = threading.Thread(target=lambda: errors.append(_error(fifo)), daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert errors and "pipe.dcm: not a regular file: it is a FIFO" in errors[0]
    assert "/dev/null: not a regular file: it is a character device" in _error("/dev/null")


def _error(path) -> str:
    try:
        read_image(path)
    except InputError as err:
        return str(err)
    return "read"


def test_dicom_whose_preamble_starts_like_a_png_is_read_as_dicom(tmp_path):
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    path = tmp_path / "ct.dcm"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + data[8:])
    assert read_image(path).meta.format == "dicom"
    np.testing.assert_array_equal(read_image(path).pixels,
                                  read_image(get_testdata_file("CT_small.dcm")).pixels)


def test_png_whose_header_promises_more_rows_is_refused(tmp_path):
    data = bytearray(_png(np.arange(48 * 40, dtype=np.uint16).reshape(48, 40).astype(np.uint8)))
    data[20:24] = struct.pack(">I", 96)  # IHDR height doubled, CRC recomputed
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path = tmp_path / "tall.png"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match="tall.png: PNG image data inflates to 1968 bytes, IHDR promises 3936"):
        read_image(path)


@pytest.mark.parametrize("value,problem", [("NaN", "not finite"), ("0", "RescaleSlope is 0"),
                                           ("abc", "not a number"), ("1\\2", "must be one number")])
def test_bad_rescale_slope_is_refused(tmp_path, value, problem):
    import pydicom

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds["RescaleSlope"] = _raw_ds("RescaleSlope", value)
    path = tmp_path / "slope.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError, match=f"slope.dcm: DICOM RescaleSlope.*{problem}|"
                                             f"slope.dcm: .*{problem}"):
        read_image(path)


def test_deflate_bomb_refused_before_inflating(tmp_path):
    data = gen_dicom_deflate_bomb(random.Random(0), None, max_pixels=100_000)[2]
    path = tmp_path / "bomb.dcm"
    path.write_bytes(data)
    assert len(data) < 200_000
    with pytest.raises(ImageTooLargeError, match="bomb.dcm: deflated DICOM data set inflates"):
        read_image(path, max_pixels=100_000)


def test_preprocess_bounds_the_padded_square_and_the_aspect_ratio():
    cfg = PreprocessConfig(size=16)
    with pytest.raises(ImageTooLargeError, match="x.png: padding the 100 x 1500 image"):
        preprocess(np.ones((100, 1500), np.float32), cfg, max_pixels=1_000_000, source="x.png")
    with pytest.raises(ImageReadError, match="aspect ratio 30:1"):
        preprocess(np.ones((10, 300), np.float32), cfg)
    with pytest.raises(InputError, match="NaN or infinite"):
        preprocess(np.full((20, 20), np.nan, np.float32), cfg)
    assert preprocess(np.ones((100, 150), np.float32), cfg, max_pixels=1_000_000).shape == (16, 16)
