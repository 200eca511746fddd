"""Seeded mutations of real image files, and a bounded runner for fuzzing the input path.

Used by ``tests/io/test_fuzz.py`` (a few hundred cases in ``make test``),
``tests/serve/test_fuzz.py`` (uploads) and ``scripts/fuzz.py`` (long runs).

:func:`generate_cases` mutates the real DICOMs that pydicom and pydicom-data ship and
PNG/JPEG phantoms it writes with Pillow; every mutation class of issue 13 has a
generator (:data:`CLASSES`), and the same ``(count, seed)`` always gives the same bytes.
A case that a correct reader must refuse (a cut file, a header that disagrees with its
data, a bomb) is marked ``must_fail``; one it must read (a valid DICOM whose preamble
starts like a PNG) ``must_read``; random byte flips may go either way.

:func:`run_cases` runs each case through ``read_image -> preprocess -> to_tensor`` in a
child process (cases batched, so a few hundred cost one interpreter start or a few)
under ``RLIMIT_AS`` and a per-case time limit, and sorts the outcome into
:data:`OUTCOMES`. Only ``ok`` and ``cxrlab-error`` are acceptable.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import random
import struct
import subprocess
import sys
import tempfile
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxrlab.errors import InputError

#: Outcomes of one case. ``ok``: read, and the result passed the checks;
#: ``cxrlab-error``: a cxrlab InputError naming the file. Everything else is a failure.
OUTCOMES = ("ok", "cxrlab-error", "error-without-file", "generic-exception", "silent-accept",
            "refused-valid", "bad-output", "hang", "memory", "crash")
ACCEPTABLE = ("ok", "cxrlab-error")

#: Small DICOMs from pydicom and pydicom-data, one per codec family (the in-suite sample).
SMALL_DICOMS = ("CT_small.dcm", "MR_small.dcm", "MR_small_bigendian.dcm", "SC_rgb.dcm",
                "SC_ybr_full_uncompressed.dcm", "SC_rgb_rle.dcm", "MR_small_RLE.dcm",
                "SC_rgb_jpeg_dcmtk.dcm", "SC_jpeg_no_color_transform.dcm",
                "MR_small_jp2klossless.dcm", "JPEG2000.dcm", "image_dfl.dcm",
                "MR_small_jpeg_ls_lossless.dcm")
#: Larger real radiographs and images, added for long runs.
LARGE_DICOMS = ("RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG3_UNCR.dcm", "693_J2KR.dcm", "OBXXXX1A.dcm",
                "JPGLosslessP14SV1_1s_1f_8b.dcm", "JPEG-LL.dcm", "US1_J2KR.dcm")
PALETTE_DICOM = "OBXXXX1A.dcm"


@dataclass(frozen=True)
class FuzzCase:
    """One input: bytes to write to a file, or a special path (FIFO, device, folder)."""

    case_id: str
    kind: str
    source: str
    data: bytes = b""
    special: str | None = None
    must_fail: bool = False
    must_read: bool = False
    family: str = ""


@dataclass
class FuzzResult:
    """What became of one case: its outcome (one of :data:`OUTCOMES`) and the message."""

    case_id: str
    kind: str
    source: str
    outcome: str
    detail: str = ""
    seconds: float = 0.0
    family: str = ""


@dataclass
class _Sources:
    dicoms: dict[str, bytes]
    palette: dict[str, bytes] = field(default_factory=dict)
    max_pixels: int = 2_000_000
    datasets: dict[str, object] = field(default_factory=dict)


# --------------------------------------------------------------------------- sources


def _load_dicoms(names: Iterable[str]) -> dict[str, bytes]:
    from pydicom.data import get_testdata_file

    found = {}
    for name in names:
        path = get_testdata_file(name)
        if path is not None:
            found[name] = Path(path).read_bytes()
    return found


def _parse(data: bytes):
    import pydicom

    return pydicom.dcmread(io.BytesIO(data), force=True)


def _write(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _pixel_offsets(data: bytes) -> tuple[int, int]:
    """Start of the (last) PixelData element and of its value, from the raw bytes."""
    for tag in (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10"):
        pos = data.rfind(tag)
        if pos > 132:
            explicit = data[pos + 4:pos + 6] in (b"OB", b"OW")
            return pos, pos + (12 if explicit else 8)
    return len(data), len(data)


def _pixel_end(data: bytes) -> int:
    """Offset just past the PixelData value (some files have elements after it)."""
    start, value = _pixel_offsets(data)
    if start >= len(data):
        return len(data)
    order = "big" if data[start:start + 2] == b"\x7f\xe0" else "little"
    length = int.from_bytes(data[value - 4:value], order)
    if length != 0xFFFFFFFF:
        return min(len(data), value + length)
    delimiter = data.find(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", value)
    return len(data) if delimiter < 0 else delimiter + 8


def phantom(rows: int, cols: int, rng: random.Random, *, bits: int = 8) -> np.ndarray:
    """A chest-like phantom: two dark lung fields in a brighter body, plus noise."""
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    body = 0.6 + 0.2 * np.cos((x / cols - 0.5) * math.pi)
    for centre in (0.3, 0.7):
        lung = ((x / cols - centre) / 0.16) ** 2 + ((y / rows - 0.5) / 0.3) ** 2 < 1.0
        body = np.where(lung, body * 0.35, body)
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 0.03, (rows, cols))
    top = 255 if bits == 8 else 65535
    return np.clip((body + noise) * top, 0, top).astype(np.uint8 if bits == 8 else np.uint16)


def _png(array: np.ndarray, **params) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG", **params)
    return buffer.getvalue()


def _jpeg(array: np.ndarray, **params) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", **params)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, pos = [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunks.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return chunks


def _png_from(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(_png_chunk(k, d) for k, d in chunks)


def _flip(data: bytes, rng: random.Random, lo: int, hi: int, count: int) -> bytes:
    out = bytearray(data)
    hi = max(lo + 1, min(hi, len(out)))
    for _ in range(count):
        pos = rng.randrange(lo, hi)
        out[pos] = rng.choice((out[pos] ^ (1 << rng.randrange(8)), rng.randrange(256), 0, 0xFF))
    return bytes(out)


# --------------------------------------------------------------------------- generators
# Each takes (rng, sources) and returns (kind, source, data, must_fail, must_read) or a case.

Gen = Callable[[random.Random, _Sources], tuple]


def _pick(rng: random.Random, sources: _Sources, test: Callable[[object], bool] | None = None
          ) -> tuple[str, bytes]:
    names = sorted(sources.dicoms)
    if test is not None:
        names = [n for n in names if test(_dataset(sources, n))]
    name = rng.choice(names)
    return name, sources.dicoms[name]


def _dataset(sources: _Sources, name: str):
    if name not in sources.datasets:
        sources.datasets[name] = _parse(sources.dicoms[name])
    return sources.datasets[name]


def _fresh(sources: _Sources, name: str):
    return _parse(sources.dicoms[name])


def _encapsulated(ds) -> bool:
    return ds.file_meta.TransferSyntaxUID.is_encapsulated


def gen_dicom_truncate(rng, sources):
    name, data = _pick(rng, sources)
    _, value_start = _pixel_offsets(data)
    end = _pixel_end(data)
    # cut at least 16 bytes before the end of the pixel data: never only trailing elements
    if value_start >= end - 16:  # pixel data not found in the raw bytes (deflated): anywhere
        value_start = 0
    cut = rng.randrange(0, end - 16) if rng.random() < 0.3 else \
        rng.randrange(value_start, end - 16)
    return "dicom-truncated", name, data[:cut], True, False


def gen_dicom_flip_any(rng, sources):
    name, data = _pick(rng, sources)
    return "dicom-byte-flips", name, _flip(data, rng, 0, len(data), rng.randint(1, 16)), False, False


def gen_dicom_flip_header(rng, sources):
    name, data = _pick(rng, sources)
    start, _ = _pixel_offsets(data)
    return "dicom-header-flips", name, _flip(data, rng, 132, start, rng.randint(1, 6)), False, False


def gen_dicom_flip_vr(rng, sources):
    name, data = _pick(rng, sources, lambda ds: not ds.file_meta.TransferSyntaxUID.is_implicit_VR)
    start, _ = _pixel_offsets(data)
    vrs = (b"AE", b"AS", b"CS", b"DA", b"DS", b"IS", b"LO", b"PN", b"SH", b"UI", b"US", b"UL",
           b"SQ", b"OB", b"OW", b"FD", b"TM", b"LT", b"ST", b"UN")
    spots = [p for p in range(136, start - 2) if data[p:p + 2] in vrs and data[p - 4] % 2 == 0]
    out = bytearray(data)
    if spots:
        pos = rng.choice(spots)
        out[pos:pos + 2] = rng.choice((bytes([rng.randrange(65, 91), rng.randrange(65, 91)]),
                                       rng.choice(vrs), b"\x00\x00", b"QQ"))
    return "dicom-vr-flip", name, bytes(out), False, False


def gen_dicom_geometry(rng, sources):
    name, _ = _pick(rng, sources)
    ds = _fresh(sources, name)
    rows, cols = int(ds.Rows), int(ds.Columns)
    new = rng.choice(((rows, cols + 1), (rows, cols - 1), (rows + 1, cols), (rows * 2, cols),
                      (rows, max(1, cols // 2)), (1, cols), (rows, 65535), (0, cols),
                      (rows - 1, cols)))
    ds.Rows, ds.Columns = new
    return "dicom-geometry", name, _write(ds), new != (rows, cols), False


def gen_dicom_photometric(rng, sources):
    name, _ = _pick(rng, sources)
    ds = _fresh(sources, name)
    photometric = str(ds.PhotometricInterpretation)
    mono = photometric.startswith("MONO")
    if mono:
        edit = rng.choice(("samples3", "rgb", "palette", "swap-mono", "unknown"))
    elif photometric == "PALETTE COLOR":
        # already one sample of palette indexes: "samples1"/"palette" would change nothing, and
        # indexes relabelled MONOCHROME2 are a header that agrees with its data (not refusable)
        edit = rng.choice(("samples3", "rgb", "unknown", "palette-as-mono"))
    else:
        edit = rng.choice(("samples1", "mono", "palette", "unknown"))
    must_fail = True
    if edit == "palette-as-mono":
        ds.PhotometricInterpretation = "MONOCHROME2"
        return f"dicom-photometric-{edit}", name, _write(ds), False, False
    if edit == "samples3":
        ds.SamplesPerPixel = 3
    elif edit == "samples1":
        ds.SamplesPerPixel = 1
    elif edit == "rgb":
        ds.PhotometricInterpretation = "RGB"
    elif edit == "mono":
        ds.PhotometricInterpretation = "MONOCHROME2"
    elif edit == "palette":
        ds.PhotometricInterpretation = "PALETTE COLOR"
    elif edit == "unknown":
        ds.PhotometricInterpretation = "CMYK"
    else:
        ds.PhotometricInterpretation = ("MONOCHROME1" if ds.PhotometricInterpretation ==
                                        "MONOCHROME2" else "MONOCHROME2")
        must_fail = False
    return f"dicom-photometric-{edit}", name, _write(ds), must_fail, not must_fail


def gen_dicom_bits(rng, sources):
    name, _ = _pick(rng, sources)
    ds = _fresh(sources, name)
    allocated = int(ds.BitsAllocated)
    edit = rng.choice(("allocated", "stored-over", "allocated-odd", "representation"))
    if edit == "allocated":
        ds.BitsAllocated = rng.choice([b for b in (8, 16, 32) if b != allocated])
    elif edit == "stored-over":
        ds.BitsStored = allocated + rng.randint(1, 8)
    elif edit == "allocated-odd":
        ds.BitsAllocated = rng.choice((0, 12, 7, 65535))
    else:
        ds.PixelRepresentation = rng.choice((2, 7))
    return "dicom-bits", name, _write(ds), True, False


def gen_dicom_rescale(rng, sources):
    name, _ = _pick(rng, sources, lambda ds: str(ds.PhotometricInterpretation).startswith("MONO"))
    ds = _fresh(sources, name)
    value = rng.choice(("NaN", "inf", "-inf", "0", "abc", "1\\2", "1e400", "2.5", "0.5"))
    keyword = "RescaleSlope" if rng.random() < 0.7 else "RescaleIntercept"
    if keyword == "RescaleIntercept" and value in ("0", "2.5", "0.5"):
        value = rng.choice(("NaN", "inf"))
    ds[keyword] = _raw_ds(keyword, value)
    valid = keyword == "RescaleSlope" and value in ("2.5", "0.5")
    if keyword == "RescaleSlope" and "RescaleIntercept" not in ds:
        ds["RescaleIntercept"] = _raw_ds("RescaleIntercept", "0")
    return "dicom-rescale", name, _write(ds), not valid, valid


def _raw_ds(keyword: str, value: str, vr: str = "DS"):
    """An element holding ``value`` as written, valid or not (written raw, unchecked)."""
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    raw = value.encode("ascii")
    if len(raw) % 2:
        raw += b" "
    return RawDataElement(Tag(tag_for_keyword(keyword)), vr, len(raw), raw, 0, False, True)


def gen_dicom_modality_lut(rng, sources):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    name, _ = _pick(rng, sources, lambda ds: str(ds.PhotometricInterpretation).startswith("MONO")
                    and int(ds.BitsAllocated) <= 16)
    ds = _fresh(sources, name)
    bits_stored = int(ds.get("BitsStored", ds.BitsAllocated))
    entries = min(2 ** bits_stored, 4096)
    item = Dataset()
    edit = rng.choice(("zero-bits", "short-data", "no-data", "short-descriptor", "valid"))
    descriptor = [entries, 0, 16]
    item.ModalityLUTType = "HU"
    data = list(range(entries))
    if edit == "zero-bits":
        descriptor = [entries, 0, 0]
    elif edit == "short-descriptor":
        descriptor = [entries, 0]
    item.add_new(0x00283002, "US", descriptor)  # LUTDescriptor
    if edit == "short-data":
        data = data[: entries // 3]
    if edit != "no-data":
        item.add_new(0x00283006, "US", data)  # LUTData
    for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType"):
        if keyword in ds:
            del ds[keyword]
    ds.ModalityLUTSequence = Sequence([item])
    valid = edit == "valid"
    # a valid LUT shorter than the stored values clips them: a read, not an error
    return f"dicom-modality-lut-{edit}", name, _write(ds), not valid, False


def gen_dicom_palette(rng, sources):
    if PALETTE_DICOM not in sources.palette:
        return gen_dicom_photometric(rng, sources)
    ds = _parse(sources.palette[PALETTE_DICOM])
    colour = rng.choice(("Red", "Green", "Blue"))
    descriptor, data = (f"{colour}PaletteColorLookupTableDescriptor",
                        f"{colour}PaletteColorLookupTableData")
    edit = rng.choice(("zero-bits", "short-data", "no-data", "short-descriptor", "no-descriptor"))
    entries, first, bits = (int(v) for v in ds[descriptor].value)
    if edit == "zero-bits":
        ds[descriptor].value = [entries, first, 0]
    elif edit == "short-descriptor":
        ds[descriptor].value = [entries, first]
    elif edit == "short-data":
        ds[data].value = ds[data].value[: len(ds[data].value) // 4 // 2 * 2]
    elif edit == "no-data":
        del ds[data]
    else:
        del ds[descriptor]
    return f"dicom-palette-{edit}", PALETTE_DICOM, _write(ds), True, False


def gen_dicom_encapsulated_cut(rng, sources):
    from pydicom.encaps import encapsulate, generate_frames

    name, _ = _pick(rng, sources, _encapsulated)
    ds = _fresh(sources, name)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    keep = rng.uniform(0.2, 0.9)
    cut = frame[: max(2, int(len(frame) * keep)) // 2 * 2]
    ds.PixelData = encapsulate([cut])
    return "dicom-compressed-cut", name, _write(ds), True, False


def gen_dicom_encapsulated_flip(rng, sources):
    name, data = _pick(rng, sources, _encapsulated)
    _, start = _pixel_offsets(data)
    # the offset table and the first fragment's item headers, or anywhere in the stream
    hi = start + 32 if rng.random() < 0.5 else len(data)
    return "dicom-compressed-flips", name, _flip(data, rng, start, hi, rng.randint(1, 6)), \
        False, False


def gen_dicom_float(rng, sources):
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    double = rng.random() < 0.5
    rows, cols = rng.randint(16, 48), rng.randint(16, 48)
    base = phantom(rows, cols, rng).astype(np.float64)
    edit = rng.choice(("huge", "huge-negative", "nan", "inf", "valid", "tiny-range"))
    big = 1e300 if double else 3e38
    if edit == "huge":
        values = base / 255.0 * big
    elif edit == "huge-negative":
        values = (base / 255.0 - 0.5) * 2 * big
    elif edit in ("nan", "inf"):
        values = base.copy()
        values[rng.randrange(rows), rng.randrange(cols)] = np.nan if edit == "nan" else np.inf
    elif edit == "tiny-range":
        values = base * (1e-30 if double else 1e-30)
    else:
        values = base * 3.7 - 100.0
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
    ds.SOPInstanceUID = pydicom.uid.generate_uid(prefix=None, entropy_srcs=[str(rng.random())])
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 64 if double else 32
    if double:
        ds.DoubleFloatPixelData = values.astype("<f8").tobytes()
    else:
        with np.errstate(over="ignore"):
            ds.FloatPixelData = values.astype("<f4").tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    valid = edit in ("valid", "tiny-range")
    return f"dicom-float-{edit}", "generated", _write(ds), not valid, edit == "valid"


def gen_dicom_deflate_bomb(rng, sources, *, max_pixels: int = 2_000_000):
    """A deflated data set whose PixelData inflates far beyond the pixel limit's cap."""
    from cxrlab.io.limits import max_decoded_bytes

    target = max_decoded_bytes(max_pixels) + (8 << 20)
    side = int(math.isqrt(target // 2)) + 1
    header = _deflate_header(side, side)
    body_prefix = _explicit_dataset_prefix(side, side)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    pieces = [compressor.compress(body_prefix)]
    chunk = bytes(1 << 22)
    remaining = side * side * 2
    pieces.append(compressor.compress(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0,
                                                  remaining)))
    while remaining:
        piece = chunk[: min(len(chunk), remaining)]
        pieces.append(compressor.compress(piece))
        remaining -= len(piece)
    pieces.append(compressor.flush())
    return "dicom-deflate-bomb", "generated", header + b"".join(pieces), True, False


def _explicit_dataset_prefix(rows: int, cols: int) -> bytes:
    def element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
        if len(value) % 2:
            value += b" " if vr != b"UI" else b"\x00"
        return struct.pack("<HH2sH", group, elem, vr, len(value)) + value

    return (element(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.1.1")
            + element(0x0008, 0x0018, b"UI", b"1.2.3.4.5.6.7")
            + element(0x0028, 0x0002, b"US", struct.pack("<H", 1))
            + element(0x0028, 0x0004, b"CS", b"MONOCHROME2")
            + element(0x0028, 0x0010, b"US", struct.pack("<H", rows))
            + element(0x0028, 0x0011, b"US", struct.pack("<H", cols))
            + element(0x0028, 0x0100, b"US", struct.pack("<H", 16))
            + element(0x0028, 0x0101, b"US", struct.pack("<H", 16))
            + element(0x0028, 0x0102, b"US", struct.pack("<H", 15))
            + element(0x0028, 0x0103, b"US", struct.pack("<H", 0)))


def _deflate_header(rows: int, cols: int) -> bytes:
    def element(elem: int, vr: bytes, value: bytes) -> bytes:
        if len(value) % 2:
            value += b"\x00"
        if vr in (b"OB",):
            return struct.pack("<HH2sHI", 0x0002, elem, vr, 0, len(value)) + value
        return struct.pack("<HH2sH", 0x0002, elem, vr, len(value)) + value

    body = (element(0x0001, b"OB", b"\x00\x01")
            + element(0x0002, b"UI", b"1.2.840.10008.5.1.4.1.1.1.1")
            + element(0x0003, b"UI", b"1.2.3.4.5.6.7")
            + element(0x0010, b"UI", b"1.2.840.10008.1.2.1.99")
            + element(0x0012, b"UI", b"1.2.3.4"))
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return bytes(128) + b"DICM" + group_length + body


def gen_dicom_preamble_signature(rng, sources):
    name, data = _pick(rng, sources)
    signature = rng.choice((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff"))
    return "dicom-preamble-signature", name, signature + data[len(signature):], False, True


def gen_dicom_frames(rng, sources):
    name, _ = _pick(rng, sources, lambda ds: not _encapsulated(ds))
    ds = _fresh(sources, name)
    ds["NumberOfFrames"] = _raw_ds("NumberOfFrames", rng.choice(("2", "0", "-1", "abc", "65535")),
                                   "IS")
    return "dicom-frames", name, _write(ds), True, False


def gen_png_truncate(rng, sources):
    data = _png(phantom(rng.randint(24, 96), rng.randint(24, 96), rng))
    return "png-truncated", "phantom", data[: rng.randrange(8, len(data) - 12)], True, False


def gen_png_flip(rng, sources):
    bits = rng.choice((8, 16))
    data = _png(phantom(rng.randint(24, 96), rng.randint(24, 96), rng, bits=bits))
    return "png-byte-flips", f"phantom{bits}", _flip(data, rng, 8, len(data), rng.randint(1, 8)), \
        False, False


def gen_png_header(rng, sources):
    rows, cols = rng.randint(24, 96), rng.randint(24, 96)
    chunks = _png_chunks(_png(phantom(rows, cols, rng), interlace=rng.random() < 0.3))
    width, height = struct.unpack(">II", chunks[0][1][:8])
    new = rng.choice(((width, height * 2), (width, height + 1), (width + 1, height),
                      (width - 1, height), (width, height - 1), (width * 3, height)))
    chunks[0] = (b"IHDR", struct.pack(">II", *new) + chunks[0][1][8:])
    return "png-header-size", "phantom", _png_from(chunks), True, False


def gen_png_structure(rng, sources):
    chunks = _png_chunks(_png(phantom(rng.randint(24, 96), rng.randint(24, 96), rng)))
    edit = rng.choice(("no-idat", "idat-first", "bad-crc", "no-iend", "two-ihdr"))
    if edit == "no-idat":
        chunks = [c for c in chunks if c[0] != b"IDAT"]
        data = _png_from(chunks)
    elif edit == "idat-first":
        idat = [c for c in chunks if c[0] == b"IDAT"]
        data = _png_from(idat + [c for c in chunks if c[0] != b"IDAT"])
    elif edit == "two-ihdr":
        data = _png_from(chunks[:1] + chunks)
    elif edit == "no-iend":
        data = _png_from(chunks[:-1])
    else:
        data = bytearray(_png_from(chunks))
        data[-20] ^= 0x55
        data = bytes(data)
    return f"png-structure-{edit}", "phantom", data, True, False


def gen_png_bomb(rng, sources):
    edit = rng.choice(("strip", "huge", "strip-tall"))
    if edit == "strip":
        array = np.zeros((1, rng.randint(25, 30000)), dtype=np.uint8)
    elif edit == "strip-tall":
        array = np.zeros((rng.randint(25, 30000), 1), dtype=np.uint8)
        array[::2] = 200
    else:
        side = math.isqrt(sources.max_pixels) + rng.randint(1, 2000)
        array = np.zeros((side, side), dtype=np.uint8)
    return f"png-bomb-{edit}", "generated", _png(array, compress_level=9), True, False


def gen_png_valid(rng, sources):
    bits = rng.choice((8, 16))
    array = phantom(rng.randint(24, 96), rng.randint(24, 96), rng, bits=bits)
    return "png-valid", f"phantom{bits}", _png(array, interlace=rng.random() < 0.3), False, True


def gen_jpeg_truncate(rng, sources):
    data = _jpeg(phantom(rng.randint(32, 96), rng.randint(32, 96), rng), quality=90)
    return "jpeg-truncated", "phantom", data[: rng.randrange(4, len(data) - 8)], True, False


def gen_jpeg_flip(rng, sources):
    data = _jpeg(phantom(rng.randint(32, 96), rng.randint(32, 96), rng), quality=90)
    return "jpeg-byte-flips", "phantom", _flip(data, rng, 2, len(data), rng.randint(1, 8)), \
        False, False


def gen_jpeg_header(rng, sources):
    """Edited frame header (SOF0 lines/samples/components) or an EOI marker mid-scan."""
    data = bytearray(_jpeg(phantom(rng.randint(32, 96), rng.randint(32, 96), rng), quality=90))
    sof = data.find(b"\xff\xc0")
    lines, samples = struct.unpack(">HH", data[sof + 5:sof + 9])
    edit = rng.choice(("taller", "wider", "eoi-mid-scan", "components"))
    if edit == "taller":
        data[sof + 5:sof + 7] = struct.pack(">H", lines + rng.choice((8, 16, lines)))
    elif edit == "wider":
        data[sof + 7:sof + 9] = struct.pack(">H", samples + rng.choice((8, 16, samples)))
    elif edit == "components":
        data[sof + 9] = rng.choice((0, 2, 4))
    else:
        sos = data.find(b"\xff\xda")
        start = sos + 2 + struct.unpack(">H", data[sos + 2:sos + 4])[0]
        cut = rng.randrange(start + 1, (start + len(data)) // 2)
        data = data[:cut] + b"\xff\xd9"
    return f"jpeg-header-{edit}", "phantom", bytes(data), True, False


def gen_jpeg_bomb(rng, sources):
    data = bytearray(_jpeg(phantom(32, 32, rng), quality=50))
    sof = data.find(b"\xff\xc0")
    side = rng.choice((9000, 20000, 65000))
    data[sof + 5:sof + 9] = struct.pack(">HH", side, side)
    return "jpeg-bomb", "generated", bytes(data), True, False


def gen_special(rng, sources):
    special = rng.choice(("fifo", "dev-null", "dev-zero", "directory"))
    return FuzzCase(case_id="", kind=f"special-{special}", source=special, special=special,
                    must_fail=True)


#: Mutation classes of issue 13 and their generators (round-robin in :func:`generate_cases`).
CLASSES: dict[str, Gen] = {
    "dicom-truncated": gen_dicom_truncate,
    "dicom-byte-flips": gen_dicom_flip_any,
    "dicom-header-flips": gen_dicom_flip_header,
    "dicom-vr-flip": gen_dicom_flip_vr,
    "dicom-geometry": gen_dicom_geometry,
    "dicom-photometric": gen_dicom_photometric,
    "dicom-bits": gen_dicom_bits,
    "dicom-rescale": gen_dicom_rescale,
    "dicom-modality-lut": gen_dicom_modality_lut,
    "dicom-palette": gen_dicom_palette,
    "dicom-compressed-cut": gen_dicom_encapsulated_cut,
    "dicom-compressed-flips": gen_dicom_encapsulated_flip,
    "dicom-float": gen_dicom_float,
    "dicom-deflate-bomb": gen_dicom_deflate_bomb,
    "dicom-preamble-signature": gen_dicom_preamble_signature,
    "dicom-frames": gen_dicom_frames,
    "png-truncated": gen_png_truncate,
    "png-byte-flips": gen_png_flip,
    "png-header-size": gen_png_header,
    "png-structure": gen_png_structure,
    "png-bomb": gen_png_bomb,
    "png-valid": gen_png_valid,
    "jpeg-truncated": gen_jpeg_truncate,
    "jpeg-byte-flips": gen_jpeg_flip,
    "jpeg-header": gen_jpeg_header,
    "jpeg-bomb": gen_jpeg_bomb,
    "special-file": gen_special,
}
#: Classes whose cases are expensive to build; generated at most this many times a run.
_RARE = {"dicom-deflate-bomb": 4, "png-bomb": 12, "special-file": 8}


def generate_cases(count: int, seed: int = 0, *, large: bool = False,
                   max_pixels: int = 2_000_000, classes: Iterable[str] | None = None
                   ) -> list[FuzzCase]:
    """``count`` seeded cases, the classes taken in turn so each is represented.

    Args:
        count: Number of cases.
        seed: The same seed gives the same cases.
        large: Add the large real radiographs of pydicom-data to the sources.
        max_pixels: The pixel limit the cases will be read with (sizes the bombs).
        classes: Only these classes (default: all of :data:`CLASSES`).
    """
    warnings.simplefilter("ignore")  # pydicom warns about the invalid values written on purpose
    rng = random.Random(seed)
    sources = _Sources(_load_dicoms(SMALL_DICOMS + (LARGE_DICOMS if large else ())),
                       palette=_load_dicoms((PALETTE_DICOM,)), max_pixels=max_pixels)
    names = list(classes) if classes is not None else list(CLASSES)
    cases: list[FuzzCase] = []
    made: Counter = Counter()
    bombs: dict[str, bytes] = {}
    index = 0
    while len(cases) < count:
        name = names[index % len(names)]
        index += 1
        limit = _RARE.get(name)
        if limit is not None and made[name] >= max(limit, count // 200):
            continue
        made[name] += 1
        case_rng = random.Random(rng.randrange(2**63))
        if name == "dicom-deflate-bomb":
            if "bomb" not in bombs:
                bombs["bomb"] = gen_dicom_deflate_bomb(case_rng, sources,
                                                       max_pixels=max_pixels)[2]
            made_case = ("dicom-deflate-bomb", "generated", bombs["bomb"], True, False)
        else:
            made_case = CLASSES[name](case_rng, sources)
        case_id = f"{len(cases):05d}-{name}"
        if isinstance(made_case, FuzzCase):
            case = FuzzCase(case_id=case_id, kind=made_case.kind, source=made_case.source,
                            special=made_case.special, must_fail=made_case.must_fail,
                            family=name)
        else:
            kind, source, data, must_fail, must_read = made_case
            case = FuzzCase(case_id=case_id, kind=kind, source=source, data=data,
                            must_fail=must_fail, must_read=must_read, family=name)
        cases.append(case)
    return cases


# --------------------------------------------------------------------------- running


#: Seconds a fuzz child may take for its imports (torch) and its job file before its first
#: case: minutes on a loaded 2-core machine.
_START_TIMEOUT_S = 600.0


def run_cases(cases: list[FuzzCase], *, memory_mb: int = 1024, case_timeout_s: float = 20.0,
              max_pixels: int = 2_000_000, batch: int = 200, size: int = 64,
              progress: Callable[[FuzzResult], None] | None = None) -> list[FuzzResult]:
    """Run every case in child processes, ``batch`` cases a child, and classify the outcomes.

    Each child sets ``RLIMIT_AS`` to its address-space size after its imports plus
    ``memory_mb``, then reads each case with ``read_image(path, max_pixels=...)``,
    ``preprocess`` (``size`` pixels) and ``to_tensor``. A case that runs past
    ``case_timeout_s`` is a ``hang``; a child killed by a signal is a ``crash`` (or
    ``memory`` when it says so); the cases after it run in a fresh child.
    """
    results: dict[str, FuzzResult] = {}
    pending = list(cases)
    with tempfile.TemporaryDirectory(prefix="cxrlab-fuzz-") as folder:
        while pending:
            chunk, pending = pending[:batch], pending[batch:]
            rest = _run_child(chunk, Path(folder), memory_mb, case_timeout_s, max_pixels, size,
                              results, progress)
            pending = rest + pending
    return [results[c.case_id] for c in cases]


def _run_child(chunk: list[FuzzCase], folder: Path, memory_mb: int, timeout: float,
               max_pixels: int, size: int, results: dict, progress) -> list[FuzzCase]:
    """Run ``chunk`` in one child; returns the cases not reached (after a hang or crash)."""
    import select

    job = folder / "job.pkl"
    job.write_bytes(pickle.dumps({"cases": chunk, "memory_mb": memory_mb,
                                  "max_pixels": max_pixels, "size": size,
                                  "folder": str(folder)}))
    env = {**os.environ, "PYTHONFAULTHANDLER": "0", "PYTHONWARNINGS": "ignore"}
    # stderr to a file, never a pipe nobody reads while the child runs (a full pipe
    # blocks the child, which would look like a hang)
    stderr_path = folder / "stderr.txt"
    with stderr_path.open("wb") as stderr_file:
        child = subprocess.Popen([sys.executable, "-m", "cxrlab.data.fuzzing", str(job)],
                                 stdout=subprocess.PIPE, stderr=stderr_file, env=env)
    by_id = {c.case_id: c for c in chunk}
    done: set[str] = set()
    current: str | None = None
    started = time.monotonic()
    buffer = b""
    os.set_blocking(child.stdout.fileno(), False)
    ready_deadline = time.monotonic() + _START_TIMEOUT_S  # imports and the job file
    while True:
        limit = (started + timeout) if current is not None else ready_deadline
        wait = max(0.0, limit - time.monotonic())
        readable, _, _ = select.select([child.stdout], [], [], min(wait, 1.0))
        if readable:
            data = child.stdout.read() or b""
            if not data and child.poll() is not None:
                break
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                message = json.loads(line)
                if message["event"] == "start":
                    current, started = message["id"], time.monotonic()
                elif message["event"] == "done":
                    case = by_id[message["id"]]
                    result = FuzzResult(case.case_id, case.kind, case.source,
                                        message["outcome"], message["detail"],
                                        message["seconds"], case.family)
                    results[case.case_id] = result
                    done.add(case.case_id)
                    current = None
                    if progress is not None:
                        progress(result)
        elif child.poll() is not None:
            break
        if time.monotonic() > limit:
            child.kill()
            child.wait()
            if current is None:
                raise RuntimeError(f"the fuzz child did not start within {_START_TIMEOUT_S:.0f} s")
            _record(results, by_id[current], "hang", f"no answer within {timeout:.0f} s",
                    timeout, progress)
            done.add(current)
            return [c for c in chunk if c.case_id not in done]
    child.wait()
    child.stdout.close()
    stderr = stderr_path.read_bytes()[-4000:].decode(errors="replace")
    if current is not None:
        outcome = "memory" if "MemoryError" in stderr or child.returncode == -9 else "crash"
        _record(results, by_id[current], outcome,
                f"child ended with {child.returncode}: {stderr.strip()[-300:]}", 0.0, progress)
        done.add(current)
    elif len(done) < len(chunk) and child.returncode != 0:
        raise RuntimeError(f"the fuzz child failed before its first case:\n{stderr[-2000:]}")
    return [c for c in chunk if c.case_id not in done]


def _record(results, case, outcome, detail, seconds, progress) -> None:
    result = FuzzResult(case.case_id, case.kind, case.source, outcome, detail, seconds,
                        case.family)
    results[case.case_id] = result
    if progress is not None:
        progress(result)


def _child(job_path: str) -> None:
    """The child: imports, RLIMIT_AS, then one JSON line before and after each case."""
    import logging

    from cxrlab.data.transforms import PreprocessConfig, preprocess, to_tensor
    from cxrlab.io import read_image
    from cxrlab.io.limits import limit_address_space

    warnings.simplefilter("ignore")
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    job = pickle.loads(Path(job_path).read_bytes())
    folder = Path(job["folder"])
    cfg = PreprocessConfig(size=job["size"])
    limit_address_space(job["memory_mb"])
    out = sys.stdout
    for case in job["cases"]:
        out.write(json.dumps({"event": "start", "id": case.case_id}) + "\n")
        out.flush()
        path = _materialize(case, folder)
        started = time.perf_counter()
        outcome, detail = _classify(case, path, read_image, preprocess, to_tensor, cfg,
                                    InputError, job["max_pixels"])
        seconds = time.perf_counter() - started
        if case.special is None:
            path.unlink(missing_ok=True)
        elif case.special == "fifo":
            path.unlink(missing_ok=True)
        out.write(json.dumps({"event": "done", "id": case.case_id, "outcome": outcome,
                              "detail": detail[:500], "seconds": round(seconds, 4)}) + "\n")
        out.flush()


def _materialize(case: FuzzCase, folder: Path) -> Path:
    if case.special == "dev-null":
        return Path("/dev/null")
    if case.special == "dev-zero":
        return Path("/dev/zero")
    if case.special == "directory":
        return folder
    path = folder / f"case-{case.case_id}"
    if case.special == "fifo":
        path.unlink(missing_ok=True)
        os.mkfifo(path)
        return path
    path.write_bytes(case.data)
    return path


def _classify(case, path, read_image, preprocess, to_tensor, cfg, input_error, max_pixels
              ) -> tuple[str, str]:
    try:
        image = read_image(path, max_pixels=max_pixels)
        tensor = to_tensor(preprocess(image.pixels, cfg, max_pixels=max_pixels, source=path),
                           channels=1, normalization="unit")
    except input_error as err:
        if case.must_read:
            return "refused-valid", str(err)
        if str(path) not in str(err):
            return "error-without-file", str(err)
        return "cxrlab-error", str(err)
    except MemoryError as err:
        return "memory", f"MemoryError: {err}"
    except BaseException as err:  # noqa: BLE001 - the fuzz suite records what escapes
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        return "generic-exception", f"{type(err).__module__}.{type(err).__name__}: {err}"
    pixels = image.pixels
    problems = []
    if pixels.ndim != 2 or pixels.shape != tuple(image.meta.shape):
        problems.append(f"pixels {pixels.shape} vs header {image.meta.shape}")
    if not np.isfinite(pixels).all():
        problems.append("non-finite pixels")
    if not bool(np.isfinite(tensor.numpy()).all()):
        problems.append("non-finite model input")
    if problems:
        return "bad-output", "; ".join(problems)
    if case.must_fail:
        return "silent-accept", f"read as {pixels.shape} {image.meta.photometric}"
    return "ok", f"{pixels.shape} {image.meta.format} {image.meta.photometric}"


def summarize(results: list[FuzzResult]) -> dict[str, Counter]:
    """Counts by mutation class and outcome, plus a ``total`` row."""
    table: dict[str, Counter] = {}
    for result in results:
        table.setdefault(result.family or result.kind, Counter())[result.outcome] += 1
        table.setdefault("total", Counter())[result.outcome] += 1
    return table


def format_table(table: dict[str, Counter]) -> str:
    """A Markdown table: one row a class, one column an outcome seen (plus cases)."""
    seen = [o for o in OUTCOMES if any(row[o] for row in table.values())]
    lines = ["| class | cases | " + " | ".join(seen) + " |",
             "|---|---:|" + "---:|" * len(seen)]
    for family in sorted(k for k in table if k != "total") + ["total"]:
        row = table.get(family, Counter())
        lines.append(f"| {family} | {sum(row.values())} | "
                     + " | ".join(str(row[o]) for o in seen) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    _child(sys.argv[1])
