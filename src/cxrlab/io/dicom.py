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

Nothing in the header is trusted before it is checked against the rest (see
:func:`read_dicom`): Rows/Columns, SamplesPerPixel, PhotometricInterpretation,
BitsAllocated/BitsStored and the pixel data's length (native) or the codestream's own
frame header (JPEG, JPEG-LS, JPEG 2000, RLE) must agree; a compressed frame must end with
its end-of-image marker, and a Huffman-coded JPEG frame (baseline, extended, lossless)
must hold all the blocks its header declares (:func:`cxrlab.io.jpeg.check_scans_complete`,
a second decode with probe bytes after the scan); Rescale Slope/Intercept must be single finite numbers with a
non-zero slope; LUT descriptors must match their data. Every call into pydicom and the
codecs runs inside :func:`cxrlab.io.guard.decoding`, so bad bytes end in an
:class:`~cxrlab.errors.ImageReadError` naming the file, never in a generic exception.
A deflated data set is inflated once with a cap (:func:`cxrlab.io.limits.max_decoded_bytes`)
before pydicom inflates it, so a decompression bomb is refused in bounded memory.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filereader import read_file_meta_info
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    RLELossless,
)

from cxrlab.errors import ImageReadError, ImageTooLargeError, UnsupportedTransferSyntaxError
from cxrlab.io.guard import decoding
from cxrlab.io.jpeg import check_scans_complete
from cxrlab.io.limits import check_geometry, max_decoded_bytes

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
#: Huffman-coded JPEG processes (T.81) whose scans :func:`check_scans_complete` probes.
_HUFFMAN_JPEG = (JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1)
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
_PALETTE = "PALETTE COLOR"
_BITS_ALLOCATED = (1, 8, 16, 32, 64)
_PALETTE_KEYWORDS = tuple(f"{colour}PaletteColorLookupTable{part}" for colour in
                          ("Red", "Green", "Blue") for part in ("Descriptor", "Data"))
_INFLATE_PIECE = 1 << 20


def has_dicm_prefix(head: bytes) -> bool:
    """Whether ``head`` has ``DICM`` at byte 128: a DICOM Part 10 file, whatever its preamble."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def looks_like_dicom(head: bytes) -> bool:
    """Whether the first bytes of a file are a DICOM file, with or without preamble.

    A Part 10 file has ``DICM`` at byte 128. A file without the preamble (as some old
    archives store them) starts directly with a data element of group 0002 (file meta)
    or 0008 (identification), little or big endian.

    Args:
        head: At least the first 132 bytes of the file (fewer if the file is shorter).
    """
    if has_dicm_prefix(head):
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
    """Decode a single-frame DICOM image after checking its header against its data.

    Args:
        path: The file (already checked to exist and to be non-empty).
        max_pixels: Largest ``Rows * Columns`` accepted; checked before decoding, and
            bounding a deflated data set's inflated size.
        invert_monochrome1: Invert MONOCHROME1 so air is dark (``False`` for masks).

    Returns:
        ``(pixels, meta)``: float32 ``(H, W)`` for monochrome images or ``(H, W, 3)``
        RGB for colour ones, and the keyword arguments of
        :class:`~cxrlab.io.image.ImageMeta` other than ``path`` and ``format``.

    Raises:
        ImageReadError: Corrupt or truncated file, no image, multi-frame object, a header
            that disagrees with the pixel data, a bad modality or palette LUT.
        ImageTooLargeError: ``Rows * Columns`` above ``max_pixels``, or a deflated data
            set that inflates beyond the cap.
        UnsupportedTransferSyntaxError: No installed codec decodes the transfer syntax.
    """
    size = path.stat().st_size
    if size > max_decoded_bytes(max_pixels):
        raise ImageTooLargeError(path, f"DICOM file is {size} bytes, more than the pixel limit "
                                       f"({max_pixels}) allows to decode")
    _check_deflated_size(path, max_pixels)
    header = _read(path, stop_before_pixels=True)
    image = _ImageHeader.from_dataset(path, header)
    check_geometry(path, image.rows, image.cols, max_pixels=max_pixels,
                   samples=image.samples)
    syntax = transfer_syntax(header)
    check_decodable(path, syntax)

    ds = _read(path, stop_before_pixels=False)
    keyword = next((k for k in _PIXEL_KEYWORDS if k in ds), None)
    if keyword is None:
        raise ImageReadError(path, "DICOM pixel data is missing or cut short (file truncated?)")
    if _ImageHeader.from_dataset(path, ds) != image:
        raise ImageReadError(path, "DICOM image attributes differ between the header and the "
                                   "whole file (corrupt file)")
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = syntax
    data = ds[keyword].value or b""
    if keyword != "PixelData":
        image.check_float_pixel_data(keyword)
    frame = None
    if syntax.is_encapsulated and keyword == "PixelData":
        frame = _check_encapsulated(path, data, image, syntax)
    else:
        image.check_native_length(len(data))
    modality = _check_modality_lut(path, ds) if image.photometric in _MONOCHROME else None
    if image.photometric == _PALETTE:
        _check_palette(path, ds, image.bits_stored)

    with decoding(path, f"cannot decode DICOM pixel data ({syntax.name})"):
        stored = ds.pixel_array
    image.check_decoded(stored)
    if syntax in _HUFFMAN_JPEG and frame is not None:
        check_scans_complete(path, frame, lambda probed: np.array_equal(
            stored, _decode_probe(path, ds, syntax, probed)))
    if image.photometric == _PALETTE:
        with decoding(path, "cannot apply the DICOM palette colour LUT"):
            pixels = apply_color_lut(stored, ds)
        pixels = pixels.astype(np.float32)
    elif stored.ndim == 3:
        # pydicom converts YBR_* to RGB while decoding
        pixels = stored.astype(np.float32)
    else:
        pixels = _monochrome(path, ds, stored, image, modality, invert_monochrome1)
    meta = {
        "shape": (image.rows, image.cols),
        "photometric": image.photometric,
        "transfer_syntax": str(syntax),
        "bits_stored": image.bits_stored,
        "pixel_spacing": _pixel_spacing(ds),
        "view_position": _text(ds, "ViewPosition"),
        "patient_id": _text(ds, "PatientID"),
        "study_id": _text(ds, "StudyInstanceUID"),
        "sop_instance_uid": _text(ds, "SOPInstanceUID"),
    }
    return pixels, meta


class _ImageHeader:
    """The Image Pixel module of one data set, checked for internal consistency."""

    def __init__(self, path: Path, rows: int, cols: int, samples: int, photometric: str,
                 bits_allocated: int, bits_stored: int, signed: bool) -> None:
        self.path, self.rows, self.cols, self.samples = path, rows, cols, samples
        self.photometric, self.bits_allocated = photometric, bits_allocated
        self.bits_stored, self.signed = bits_stored, signed

    def _key(self) -> tuple:
        return (self.rows, self.cols, self.samples, self.photometric, self.bits_allocated,
                self.bits_stored, self.signed)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ImageHeader) and self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def from_dataset(cls, path: Path, ds: Dataset) -> _ImageHeader:
        rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
        if not rows or not cols:
            raise ImageReadError(path, "DICOM has no Rows/Columns, or they are not positive "
                                       "integers: not an image, or the header is corrupt")
        frames = _int(ds, "NumberOfFrames") if "NumberOfFrames" in ds else 1
        if frames is None or frames < 1:
            raise ImageReadError(path, f"DICOM NumberOfFrames is not a positive integer "
                                       f"({ds.get('NumberOfFrames')!r})")
        if frames > 1:
            raise ImageReadError(path, f"multi-frame DICOM ({frames} frames); cxrlab reads "
                                       "single-frame radiographs only")
        samples = _int(ds, "SamplesPerPixel") if "SamplesPerPixel" in ds else 1
        photometric = _text(ds, "PhotometricInterpretation")
        photometric = photometric.upper() if photometric else None
        if photometric not in _MONOCHROME + _COLOUR + (_PALETTE,):
            raise ImageReadError(path, f"DICOM PhotometricInterpretation {photometric!r} is "
                                       "missing or not one cxrlab reads")
        needed = 3 if photometric in _COLOUR else 1
        if samples != needed:
            raise ImageReadError(path, f"DICOM SamplesPerPixel is {samples!r} but "
                                       f"PhotometricInterpretation {photometric} needs {needed}")
        allocated = _int(ds, "BitsAllocated")
        if allocated not in _BITS_ALLOCATED:
            raise ImageReadError(path, f"DICOM BitsAllocated is {allocated!r}, not one of "
                                       f"{_BITS_ALLOCATED}")
        stored = _int(ds, "BitsStored") if "BitsStored" in ds else allocated
        if stored is None or not 1 <= stored <= allocated:
            raise ImageReadError(path, f"DICOM BitsStored {stored!r} is not between 1 and "
                                       f"BitsAllocated ({allocated})")
        representation = _int(ds, "PixelRepresentation") if "PixelRepresentation" in ds else 0
        if representation not in (0, 1):
            raise ImageReadError(path, f"DICOM PixelRepresentation is {representation!r}, not "
                                       "0 (unsigned) or 1 (signed)")
        return cls(path, rows, cols, samples, photometric, allocated, stored,
                   representation == 1)

    def native_bytes(self) -> int:
        return (self.rows * self.cols * self.samples * self.bits_allocated + 7) // 8

    def check_native_length(self, actual: int) -> None:
        """The pixel data holds exactly what the header promises (plus one pad byte)."""
        expected = self.native_bytes()
        shape = (f"{self.rows} x {self.cols}, {self.samples} sample(s), "
                 f"{self.bits_allocated} bits")
        if actual < expected:
            raise ImageReadError(self.path, f"DICOM pixel data is truncated: {actual} bytes, "
                                            f"the header ({shape}) needs {expected}")
        if actual > expected + (expected % 2):
            raise ImageReadError(self.path, f"DICOM pixel data is {actual} bytes, the header "
                                            f"({shape}) needs {expected}: the header disagrees "
                                            "with the data")

    def check_float_pixel_data(self, keyword: str) -> None:
        bits = 32 if keyword == "FloatPixelData" else 64
        if self.bits_allocated != bits or self.samples != 1:
            raise ImageReadError(self.path, f"DICOM {keyword} needs BitsAllocated {bits} and "
                                            f"one sample, the header says "
                                            f"{self.bits_allocated} and {self.samples}")

    def check_codestream(self, rows: int, cols: int, components: int, precision: int,
                         codec: str) -> None:
        """A compressed frame's own header agrees with the DICOM header."""
        if (rows, cols) != (self.rows, self.cols) or components != self.samples:
            raise ImageReadError(self.path, f"{codec} frame is {rows} x {cols} with "
                                            f"{components} component(s), the DICOM header says "
                                            f"{self.rows} x {self.cols} with {self.samples}")
        smallest = next(b for b in (8, 16, 32, 64) if b >= precision)
        if precision > self.bits_allocated or self.bits_allocated != smallest:
            raise ImageReadError(self.path, f"{codec} frame has {precision}-bit samples, the "
                                            f"DICOM header says BitsAllocated "
                                            f"{self.bits_allocated}")

    def check_decoded(self, stored: np.ndarray) -> None:
        shape = (self.rows, self.cols) if self.samples == 1 else (self.rows, self.cols, 3)
        if stored.shape != shape:
            raise ImageReadError(self.path, f"decoded pixel data has shape {stored.shape}, the "
                                            f"header says {shape}")


def _check_deflated_size(path: Path, max_pixels: int) -> None:
    """Inflate a deflated data set once, discarding it, to refuse bombs in bounded memory."""
    with path.open("rb") as handle:
        head = handle.read(132)
    if not has_dicm_prefix(head):
        return
    with decoding(path, "cannot parse the DICOM file meta information"):
        meta = read_file_meta_info(path)
        syntax = str(meta.get("TransferSyntaxUID", "") or "").strip()
        group_length = meta.get("FileMetaInformationGroupLength")
    if syntax != DeflatedExplicitVRLittleEndian:
        return
    if not isinstance(group_length, int) or group_length <= 0:
        raise ImageReadError(path, "deflated DICOM lacks a valid file meta group length")
    cap = max_decoded_bytes(max_pixels)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    with path.open("rb") as handle:
        handle.seek(132 + 12 + group_length)
        while not inflater.eof:
            data = inflater.unconsumed_tail or handle.read(_INFLATE_PIECE)
            if not data:
                break
            try:
                total += len(inflater.decompress(data, _INFLATE_PIECE))
            except zlib.error as err:
                raise ImageReadError(path, f"deflated DICOM data set is corrupt: {err}") from err
            if total > cap:
                raise ImageTooLargeError(path, f"deflated DICOM data set inflates to more than "
                                               f"{cap} bytes, above what the pixel limit "
                                               f"({max_pixels}) allows")


def read_dicom_header(path: str | Path) -> Dataset:
    """The DICOM header (no pixel data), every element parsed now, for de-identification.

    Raises:
        ImageReadError: pydicom cannot parse an element (a corrupt length or VR, a file
            cut inside the header), named with the file.
    """
    return _read(Path(path), stop_before_pixels=True)


def _read(path: Path, *, stop_before_pixels: bool) -> Dataset:
    """Parse the file and convert every element now, inside the guard (pydicom is lazy).

    pydicom reads from an in-memory copy: a file object's ``read(n)`` allocates ``n``
    bytes before reading, so a corrupt element length of 2 GiB would allocate 2 GiB;
    an in-memory buffer returns only the bytes that exist.
    """
    buffer = io.BytesIO(path.read_bytes())
    buffer.name = str(path)
    with decoding(path, "corrupt or truncated DICOM"):
        ds = pydicom.dcmread(buffer, stop_before_pixels=stop_before_pixels, force=True)
        for _ in ds.iterall():
            pass
        for _ in ds.file_meta.iterall():
            pass
    return ds


def transfer_syntax(ds: Dataset) -> UID:
    """The file's transfer syntax; files without file meta get the one they were parsed with."""
    meta = ds.get("file_meta")
    if meta is not None and "TransferSyntaxUID" in meta:
        return UID(str(meta.TransferSyntaxUID).strip())
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if little:
        return ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return ExplicitVRBigEndian


def check_decodable(path: Path, syntax: UID) -> None:
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


def _decode_probe(path: Path, ds: Dataset, syntax: UID, frame: bytes) -> np.ndarray:
    """Decode ``frame`` in place of the data set's own frame, with the same decoder."""
    original = ds.PixelData
    try:
        ds.PixelData = encapsulate([frame])
        with decoding(path, f"{syntax.name} scan data ends early (decoding it with probe "
                            "bytes after the scan fails)"):
            return ds.pixel_array
    finally:
        ds.PixelData = original


def _check_encapsulated(path: Path, data: bytes, image: _ImageHeader, syntax: UID) -> bytes:
    """The one frame is complete and its own header agrees with the DICOM header.

    Returns:
        The frame's bytes.
    """
    with decoding(path, "corrupt encapsulated DICOM pixel data"):
        frames = list(generate_frames(data, number_of_frames=1))
    if len(frames) != 1 or not frames[0]:
        raise ImageReadError(path, "encapsulated DICOM pixel data does not hold one frame")
    frame = frames[0]
    if syntax == RLELossless:
        _check_rle(path, frame, image)
        return frame
    # EOI/EOC (FF D9), then at most one pad byte (00 or FF) as some encoders write
    end = frame.rstrip(b"\x00")[-3:]
    if frame[:2] != b"\xff\xd8" and frame[:2] != b"\xff\x4f" and frame[4:8] != b"jP  ":
        raise ImageReadError(path, f"{syntax.name} frame does not start with an SOI/SOC marker")
    if b"\xff\xd9" not in end:
        raise ImageReadError(path, f"{syntax.name} frame does not end with its end-of-image "
                                   "marker: the compressed data is cut short")
    if frame[:2] == b"\xff\x4f":
        _check_j2k_siz(path, frame, image)
    elif frame[:2] == b"\xff\xd8":
        _check_jpeg_sof(path, frame, image)
    return frame


def _check_j2k_siz(path: Path, frame: bytes, image: _ImageHeader) -> None:
    """ISO/IEC 15444-1 A.5.1: SIZ follows SOC; compare the image area and components."""
    if len(frame) < 42 or frame[2:4] != b"\xff\x51":
        raise ImageReadError(path, "JPEG 2000 codestream lacks its SIZ marker after SOC")
    xsiz, ysiz, x0, y0 = struct.unpack(">IIII", frame[8:24])
    (components,) = struct.unpack(">H", frame[40:42])
    if components == 0 or len(frame) < 42 + 3 * components:
        raise ImageReadError(path, "JPEG 2000 SIZ marker is cut short")
    precisions = {(frame[42 + 3 * i] & 0x7F) + 1 for i in range(components)}
    image.check_codestream(ysiz - y0, xsiz - x0, components, max(precisions), "JPEG 2000")


def _check_jpeg_sof(path: Path, frame: bytes, image: _ImageHeader) -> None:
    """ITU-T T.81 B.2.2 / T.87: the first SOFn (or SOF55 for JPEG-LS) gives P, Y, X, Nf."""
    pos = 2
    while pos + 4 <= len(frame):
        if frame[pos] != 0xFF:
            raise ImageReadError(path, f"JPEG frame has no marker at byte {pos} before its SOF")
        marker = frame[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        (length,) = struct.unpack(">H", frame[pos + 2:pos + 4])
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                      0xCF, 0xF7):
            if length < 8 or pos + 10 > len(frame):
                raise ImageReadError(path, "JPEG SOF marker is cut short")
            precision, lines, samples, components = struct.unpack(">BHHB",
                                                                   frame[pos + 4:pos + 10])
            image.check_codestream(lines, samples, components, precision, "JPEG")
            return
        if marker in (0xDA, 0xD9):
            break
        pos += 2 + length
    raise ImageReadError(path, "JPEG frame has no SOF marker before its scan")


def _check_rle(path: Path, frame: bytes, image: _ImageHeader) -> None:
    """DICOM PS3.5 G.3.1: a 64-byte header of segment count and offsets, all in the frame."""
    if len(frame) < 64:
        raise ImageReadError(path, "RLE frame is shorter than its 64-byte header")
    header = struct.unpack("<16I", frame[:64])
    count = header[0]
    needed = image.samples * image.bits_allocated // 8
    if count != needed:
        raise ImageReadError(path, f"RLE frame has {count} segment(s), the header "
                                   f"({image.samples} sample(s), {image.bits_allocated} bits) "
                                   f"needs {needed}")
    offsets = list(header[1:1 + count]) + [len(frame)]
    if offsets[0] != 64 or any(b <= a for a, b in zip(offsets, offsets[1:])):
        raise ImageReadError(path, f"RLE segment offsets {offsets[:-1]} are not increasing "
                                   f"from 64 within the {len(frame)}-byte frame")
    segment = image.rows * image.cols
    for index, (start, stop) in enumerate(zip(offsets, offsets[1:])):
        decoded, left = _rle_decoded_length(frame[start:stop], segment)
        if decoded != segment or left > 1:
            raise ImageReadError(path, f"RLE segment {index} does not decode to exactly "
                                       f"{image.rows} x {image.cols} bytes: the header "
                                       "disagrees with the data, or the data is cut short")


def _rle_decoded_length(segment: bytes, size_wanted: int) -> tuple[int, int]:
    """``(bytes decoded, bytes left unread)`` of a PackBits segment, stopping at ``size_wanted``
    (counting only: nothing is decoded)."""
    total = pos = 0
    size = len(segment)
    while pos < size and total < size_wanted:
        header = segment[pos]
        if header < 128:
            run = header + 1
            if pos + 1 + run > size:
                return -1, 0
            total += run
            pos += 1 + run
        elif header > 128:
            if pos + 2 > size:
                return -1, 0
            total += 257 - header
            pos += 2
        else:
            pos += 1
    return total, size - pos


def _check_modality_lut(path: Path, ds: Dataset) -> str | None:
    """Rescale Slope/Intercept single, finite, slope non-zero; a Modality LUT that matches
    its descriptor. Returns ``"lut"``, ``"rescale"`` or ``None`` (identity)."""
    if "ModalityLUTSequence" in ds:
        items = ds.ModalityLUTSequence
        if len(items) != 1:
            raise ImageReadError(path, f"DICOM Modality LUT Sequence has {len(items)} items, "
                                       "not 1")
        _check_lut(path, items[0], "LUTDescriptor", "LUTData", "Modality LUT")
        return "lut"
    present = [k for k in ("RescaleSlope", "RescaleIntercept") if k in ds]
    if not present:
        return None
    slope = _single_number(path, ds, "RescaleSlope", 1.0)
    _single_number(path, ds, "RescaleIntercept", 0.0)
    if slope == 0:
        raise ImageReadError(path, "DICOM RescaleSlope is 0: every pixel would have the same "
                                   "value")
    return "rescale"


def _single_number(path: Path, ds: Dataset, keyword: str, default: float) -> float:
    if keyword not in ds:
        return default
    value = ds[keyword].value
    if value is None or value == "":
        return default
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        raise ImageReadError(path, f"DICOM {keyword} must be one number, got {list(value)!r}")
    try:
        number = float(str(value))
    except ValueError:
        raise ImageReadError(path, f"DICOM {keyword} is not a number: {value!r}") from None
    if not math.isfinite(number):
        raise ImageReadError(path, f"DICOM {keyword} is not finite: {value!r}")
    return number


def _check_lut(path: Path, item: Dataset, descriptor_kw: str, data_kw: str, name: str) -> None:
    """A LUT descriptor (entries, first mapped value, bits: PS3.3 C.11.1.1) and its data."""
    descriptor = item.get(descriptor_kw)
    try:
        entries, _first, bits = (int(v) for v in descriptor)
    except (TypeError, ValueError):
        raise ImageReadError(path, f"DICOM {name} descriptor {descriptor!r} is not three "
                                   "integers") from None
    entries = entries or 65536
    if bits not in (8, 16):
        raise ImageReadError(path, f"DICOM {name} descriptor declares {bits} bits, not 8 or 16")
    data = item.get(data_kw)
    if data is None:
        raise ImageReadError(path, f"DICOM {name} has no {data_kw}")
    if isinstance(data, bytes):
        count = len(data) if bits == 8 else len(data) // 2
    else:
        count = len(data) if hasattr(data, "__len__") else 1
    if count < entries:
        raise ImageReadError(path, f"DICOM {name} declares {entries} entries but its data "
                                   f"holds {count}")


def _check_palette(path: Path, ds: Dataset, bits_stored: int) -> None:
    if any(k not in ds for k in _PALETTE_KEYWORDS if k.endswith("Descriptor")):
        raise ImageReadError(path, "PALETTE COLOR DICOM lacks its Red/Green/Blue palette "
                                   "descriptors")
    if any(f"Segmented{colour}PaletteColorLookupTableData" in ds
           for colour in ("Red", "Green", "Blue")):
        return  # segmented palettes are checked by pydicom while it expands them
    for colour in ("Red", "Green", "Blue"):
        _check_lut(path, ds, f"{colour}PaletteColorLookupTableDescriptor",
                   f"{colour}PaletteColorLookupTableData", f"{colour} palette")


def _monochrome(path: Path, ds: Dataset, stored: np.ndarray, image: _ImageHeader,
                modality: str | None, invert: bool) -> np.ndarray:
    if modality is None:
        values = stored.astype(np.float32)
    else:
        with decoding(path, "cannot apply the DICOM modality LUT"):
            values = apply_modality_lut(stored, ds)
        values = np.asarray(values).astype(np.float32, copy=False)
    if invert and image.photometric == "MONOCHROME1":
        lo, hi = _nominal_range(path, ds, stored, image, modality)
        values = np.float32(lo + hi) - values
    return values


def _nominal_range(path: Path, ds: Dataset, stored: np.ndarray, image: _ImageHeader,
                   modality: str | None) -> tuple[float, float]:
    """Modality-LUT output of the smallest and largest storable value."""
    if stored.dtype.kind == "f":
        return float(np.min(stored)), float(np.max(stored))
    bits = image.bits_stored
    if image.signed:
        extremes = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1], dtype=np.int64)
    else:
        extremes = np.array([0, 2 ** bits - 1], dtype=np.int64)
    if modality is None:
        return float(extremes[0]), float(extremes[1])
    with decoding(path, "cannot apply the DICOM modality LUT"):
        mapped = apply_modality_lut(extremes, ds)
    mapped = np.asarray(mapped, dtype=np.float64)
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
    except (TypeError, ValueError, OverflowError):
        return None


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    text = "" if value is None else str(value).strip()
    return text or None
