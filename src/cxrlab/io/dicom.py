"""Reading DICOM radiographs with pydicom and the pylibjpeg codecs.

The reader works in two passes so that nothing large is decoded before it is checked:

1. The header is read with ``stop_before_pixels=True``. ``Rows * Columns`` is compared
   with the pixel limit, multi-frame objects are refused, and the transfer syntax is
   checked against the decoders pydicom has available (pylibjpeg-libjpeg for JPEG
   baseline/extended/lossless and JPEG-LS, pylibjpeg-openjpeg or Pillow for JPEG 2000,
   pylibjpeg-rle or pydicom for RLE Lossless, pydicom itself for native data).
2. The whole file is read, the stored pixel data length is checked against what the
   header promises (native syntaxes) so that a truncated file never decodes into a
   partially-zero image, and the pixels are decoded.

Intensities: the modality LUT (Rescale Slope/Intercept or a Modality LUT Sequence) is
applied with :func:`pydicom.pixels.apply_modality_lut`; MONOCHROME1 images are inverted
so that air is dark and bone bright. The inversion maps the nominal output range of the
modality LUT onto itself (``lo + hi - x``, with ``lo``/``hi`` the LUT applied to the
smallest and largest storable value), so it depends on the header only, never on the
image content. VOI LUTs and window settings are not applied: the preprocessing
(percentile clipping and min-max scaling) sets the display range.

Colour images (RGB, YBR_* and PALETTE COLOR) are returned as ``(H, W, 3)`` RGB arrays;
:func:`cxrlab.io.image.read_image` converts them to gray. Multi-frame objects
(``NumberOfFrames > 1``) are refused with :class:`~cxrlab.errors.ImageReadError`: a chest
radiograph is a single frame, and silently picking one frame of a cine or tomosynthesis
series would hide a wrong input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from cxrlab.errors import ImageReadError, ImageTooLargeError, UnsupportedTransferSyntaxError

#: Exceptions pydicom and its codec plugins raise on corrupt input. The plugins are
#: third-party C extensions whose error types vary, so the decode step catches these.
_DECODE_ERRORS = (ValueError, RuntimeError, OSError, EOFError, KeyError, IndexError,
                  TypeError, AttributeError, NotImplementedError, InvalidDicomError)
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def looks_like_dicom(head: bytes) -> bool:
    """Whether the first bytes of a file are a DICOM file, with or without preamble.

    A Part 10 file has ``DICM`` at byte 128. A file without the preamble (as some old
    archives store them) starts directly with a data element of group 0002 (file meta)
    or 0008 (identification), little or big endian.

    Args:
        head: At least the first 132 bytes of the file (fewer if the file is shorter).
    """
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if len(head) < 8:
        return False
    for order in ("little", "big"):
        group = int.from_bytes(head[0:2], order)
        element = int.from_bytes(head[2:4], order)
        if group in (0x0002, 0x0008) and element < 0x0100:
            return True
    return False


def read_dicom(
    path: Path, *, max_pixels: int, invert_monochrome1: bool = True
) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode a single-frame DICOM image.

    Args:
        path: The file (already checked to exist and to be non-empty).
        max_pixels: Largest ``Rows * Columns`` accepted; checked before decoding.
        invert_monochrome1: Invert MONOCHROME1 so air is dark (``False`` for masks).

    Returns:
        ``(pixels, meta)``: float32 ``(H, W)`` for monochrome images or ``(H, W, 3)``
        RGB for colour ones, and the keyword arguments of
        :class:`~cxrlab.io.image.ImageMeta` other than ``path`` and ``format``.

    Raises:
        ImageReadError: Corrupt or truncated file, no image, multi-frame object.
        ImageTooLargeError: ``Rows * Columns`` above ``max_pixels``.
        UnsupportedTransferSyntaxError: No installed codec decodes the transfer syntax.
    """
    header = _read(path, stop_before_pixels=True)
    rows, cols = _int(header, "Rows"), _int(header, "Columns")
    if not rows or not cols:
        raise ImageReadError(path, "DICOM has no Rows/Columns: not an image, or the header "
                                   "is truncated")
    if rows * cols > max_pixels:
        raise ImageTooLargeError(path, f"image is {rows} x {cols} = {rows * cols} pixels, "
                                       f"above the limit of {max_pixels} (max_pixels)")
    frames = _int(header, "NumberOfFrames") or 1
    if frames > 1:
        raise ImageReadError(path, f"multi-frame DICOM ({frames} frames); cxrlab reads "
                                   "single-frame radiographs only")
    syntax = _transfer_syntax(header)
    _check_decodable(path, syntax)

    ds = _read(path, stop_before_pixels=False)
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        raise ImageReadError(path, "DICOM pixel data is missing or cut short (file truncated?)")
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = syntax
    if not syntax.is_encapsulated and "PixelData" in ds:
        _check_native_length(path, ds, rows, cols)
    try:
        stored = ds.pixel_array
    except _DECODE_ERRORS as err:
        raise ImageReadError(path, f"cannot decode DICOM pixel data ({syntax.name}): "
                                   f"{err}") from err

    photometric = str(ds.get("PhotometricInterpretation", "") or "").upper() or None
    if stored.shape[:2] != (rows, cols):
        raise ImageReadError(path, f"decoded pixel data has shape {stored.shape}, header says "
                                   f"{rows} x {cols}")
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(stored, ds).astype(np.float32)
    elif stored.ndim == 3:
        # pydicom converts YBR_* to RGB while decoding
        pixels = stored.astype(np.float32)
    else:
        pixels = _monochrome(ds, stored, photometric, invert_monochrome1)
    meta = {
        "shape": (rows, cols),
        "photometric": photometric,
        "transfer_syntax": str(syntax),
        "bits_stored": _int(ds, "BitsStored"),
        "pixel_spacing": _pixel_spacing(ds),
        "view_position": _text(ds, "ViewPosition"),
        "patient_id": _text(ds, "PatientID"),
        "study_id": _text(ds, "StudyInstanceUID"),
        "sop_instance_uid": _text(ds, "SOPInstanceUID"),
    }
    return pixels, meta


def _read(path: Path, *, stop_before_pixels: bool) -> Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
    except _DECODE_ERRORS as err:
        raise ImageReadError(path, f"corrupt or truncated DICOM: {err}") from err


def _transfer_syntax(ds: Dataset) -> UID:
    """The file's transfer syntax; files without file meta get the one they were parsed with."""
    meta = ds.get("file_meta")
    if meta is not None and "TransferSyntaxUID" in meta:
        return UID(str(meta.TransferSyntaxUID).strip())
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if little:
        return ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return ExplicitVRBigEndian


def _check_decodable(path: Path, syntax: UID) -> None:
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as err:
        raise UnsupportedTransferSyntaxError(
            path, f"transfer syntax {_describe(syntax)} is not supported: pydicom has no "
                  "pixel data decoder for it") from err
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a decoding plugin"
        raise UnsupportedTransferSyntaxError(
            path, f"transfer syntax {_describe(syntax)} needs a codec that is not "
                  f"installed ({missing})")


def _describe(syntax: UID) -> str:
    name = syntax.name
    return str(syntax) if name == str(syntax) else f"{syntax} ({name})"


def _check_native_length(path: Path, ds: Dataset, rows: int, cols: int) -> None:
    samples = _int(ds, "SamplesPerPixel") or 1
    bits = _int(ds, "BitsAllocated")
    if not bits:
        raise ImageReadError(path, "DICOM has no BitsAllocated")
    expected = (rows * cols * samples * bits + 7) // 8
    actual = len(ds.PixelData)
    if actual < expected:
        raise ImageReadError(path, f"DICOM pixel data is truncated: {actual} bytes, the header "
                                   f"({rows} x {cols}, {samples} sample(s), {bits} bits) needs "
                                   f"{expected}")


def _monochrome(ds: Dataset, stored: np.ndarray, photometric: str | None,
                invert: bool) -> np.ndarray:
    values = apply_modality_lut(stored, ds).astype(np.float32, copy=False)
    if invert and photometric == "MONOCHROME1":
        lo, hi = _nominal_range(ds, stored)
        values = np.float32(lo + hi) - values
    return values


def _nominal_range(ds: Dataset, stored: np.ndarray) -> tuple[float, float]:
    """Modality-LUT output of the smallest and largest storable value."""
    bits = _int(ds, "BitsStored")
    if stored.dtype.kind == "f" or not bits:
        return float(stored.min()), float(stored.max())
    if _int(ds, "PixelRepresentation") == 1:
        extremes = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1], dtype=np.int64)
    else:
        extremes = np.array([0, 2 ** bits - 1], dtype=np.int64)
    mapped = np.asarray(apply_modality_lut(extremes, ds), dtype=np.float64)
    return float(mapped.min()), float(mapped.max())


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    """PixelSpacing, else ImagerPixelSpacing; zero or malformed values count as absent."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            row, col = (float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if row > 0 and col > 0:
            return row, col
    return None


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    text = "" if value is None else str(value).strip()
    return text or None
