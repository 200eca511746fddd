"""Reading radiographs and masks: DICOM, PNG (8/16-bit) and JPEG, detected by content.

:func:`read_image` looks at the first bytes of the file, never at its extension: ``DICM``
at byte 128 (or a group 0002/0008 element at byte 0 for DICOM without preamble), the
PNG signature, or the JPEG SOI marker. Every failure raises a specific
:class:`~cxrlab.errors.InputError` naming the file and the problem:

- missing path: :class:`~cxrlab.errors.MissingFileError`;
- empty, truncated, corrupt or non-image file: :class:`~cxrlab.errors.ImageReadError`;
- DICOM compressed with a syntax no installed codec decodes:
  :class:`~cxrlab.errors.UnsupportedTransferSyntaxError`;
- more than ``max_pixels`` pixels, found from the header before any pixel data is
  decoded: :class:`~cxrlab.errors.ImageTooLargeError`.

PNG and JPEG structure is checked first (:mod:`cxrlab.io.png`: chunk order, CRCs and the
inflated image data's length against IHDR; :mod:`cxrlab.io.jpeg`: markers and enough scan
data for the declared frame, and after decoding, scans that end before their frame is
complete), then they are decoded by Pillow with ``ImageFile.LOAD_TRUNCATED_IMAGES`` left at its
default ``False`` (this module never changes it), so a truncated file raises instead of
decoding into a partly black image; PNG chunk CRCs are verified as well. JPEG EXIF
orientation is not applied: the pixels are returned as stored. 16-bit colour PNGs are
reduced to 8 bits per channel by Pillow.

The returned pixels are float32 ``(H, W)``, air dark (low) and bone bright (high):
DICOM gets its modality LUT and MONOCHROME1 inversion (see :mod:`cxrlab.io.dicom`);
colour images are converted to gray with the ITU-R BT.601 luma weights
(0.299 R + 0.587 G + 0.114 B, as Pillow and OpenCV do).
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops

from cxrlab.errors import ImageReadError, ImageTooLargeError, MissingFileError
from cxrlab.io.dicom import has_dicm_prefix, looks_like_dicom, read_dicom
from cxrlab.io.guard import decoding
from cxrlab.io.limits import DEFAULT_MAX_PIXELS, check_geometry
from cxrlab.io.jpeg import check_jpeg_structure, check_scans_complete
from cxrlab.io.png import check_png_structure

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8\xff"
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_BITS_BY_MODE = {"1": 1, "L": 8, "LA": 8, "P": 8, "PA": 8, "RGB": 8, "RGBA": 8, "CMYK": 8,
                 "YCbCr": 8, "I;16": 16, "I;16B": 16, "I;16L": 16, "I": 32, "F": 32}


@dataclass(frozen=True)
class ImageMeta:
    """What is known about a stored image besides its pixels.

    Attributes:
        path: The file read.
        format: ``"dicom"``, ``"png"`` or ``"jpeg"`` (from the content, not the name).
        shape: ``(rows, cols)`` of the stored image.
        photometric: DICOM PhotometricInterpretation as stored (``"MONOCHROME1"``, ...) or
            the Pillow mode for PNG/JPEG (``"L"``, ``"I;16"``, ``"RGB"``, ...).
        transfer_syntax: DICOM transfer syntax UID; ``None`` for PNG/JPEG.
        bits_stored: DICOM BitsStored, or the bit depth of the PNG/JPEG mode.
        pixel_spacing: ``(row, col)`` spacing in mm from PixelSpacing, else
            ImagerPixelSpacing; ``None`` when absent or zero.
        view_position: DICOM ViewPosition (``"PA"``, ``"AP"``, ``"LL"``, ...).
        patient_id: DICOM PatientID.
        study_id: DICOM StudyInstanceUID.
        sop_instance_uid: DICOM SOPInstanceUID.
    """

    path: str
    format: str
    shape: tuple[int, int]
    photometric: str | None = None
    transfer_syntax: str | None = None
    bits_stored: int | None = None
    pixel_spacing: tuple[float, float] | None = None
    view_position: str | None = None
    patient_id: str | None = None
    study_id: str | None = None
    sop_instance_uid: str | None = None


@dataclass(frozen=True)
class XrayImage:
    """A decoded radiograph.

    Attributes:
        pixels: float32 ``(H, W)``; modality LUT applied, MONOCHROME1 inverted so air is
            dark (low) and bone bright (high), colour converted to gray.
        meta: Header information, see :class:`ImageMeta`.
    """

    pixels: np.ndarray
    meta: ImageMeta


def read_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> XrayImage:
    """Read a DICOM, PNG or JPEG radiograph, detecting the format from the file content.

    Args:
        path: The image file.
        max_pixels: Largest ``rows * cols`` accepted. The size is read from the header
            and checked before any pixel data is decoded.

    Returns:
        The gray float32 pixels (air dark, bone bright) and their :class:`ImageMeta`.

    Raises:
        MissingFileError: ``path`` does not exist or is not a file.
        ImageReadError: Empty, truncated, corrupt or non-image file; multi-frame DICOM.
        UnsupportedTransferSyntaxError: DICOM compressed with an undecodable syntax.
        ImageTooLargeError: More than ``max_pixels`` pixels.

    Example:
        >>> img = read_image("RG1_UNCR.dcm")  # doctest: +SKIP
        >>> img.meta.photometric, img.pixels.shape  # doctest: +SKIP
        ('MONOCHROME1', (1955, 1841))
    """
    return _read(Path(path), max_pixels=max_pixels, invert_monochrome1=True)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask image (PNG preferred; JPEG is lossy) as bool ``(H, W)``: nonzero = inside.

    Stored values are used as they are: a MONOCHROME1 DICOM mask is not inverted, and a
    colour mask counts a pixel as inside when any channel is nonzero.

    Raises:
        MissingFileError, ImageReadError: As for :func:`read_image`.
    """
    return _read(Path(path), max_pixels=DEFAULT_MAX_PIXELS, invert_monochrome1=False).pixels > 0


def detect_format(path: str | Path) -> str:
    """``"dicom"``, ``"png"`` or ``"jpeg"`` from the first bytes of ``path``.

    Raises:
        MissingFileError: ``path`` does not exist or is not a file.
        ImageReadError: The file is empty or is none of the three formats.
    """
    path = Path(path)
    _check_regular_file(path)
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError as err:
        raise ImageReadError(path, f"cannot open file: {err.strerror or err}") from err
    if not head:
        raise ImageReadError(path, "file is empty (0 bytes)")
    if has_dicm_prefix(head):
        # first: a DICOM preamble is free-form and may itself start with a PNG/JPEG signature
        return "dicom"
    if head.startswith(_PNG_SIGNATURE):
        return "png"
    if head.startswith(_JPEG_SOI):
        return "jpeg"
    if looks_like_dicom(head):
        return "dicom"
    raise ImageReadError(path, f"not a DICOM, PNG or JPEG file (starts with {head[:8]!r})")


def _check_regular_file(path: Path) -> None:
    """Refuse what is not a regular file before opening it (opening a FIFO would block)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise MissingFileError(path, "file not found") from None
    except OSError as err:
        raise ImageReadError(path, f"cannot open file: {err.strerror or err}") from err
    if stat.S_ISDIR(mode):
        raise MissingFileError(path, "is a directory, not an image file")
    if not stat.S_ISREG(mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else
                "a character device" if stat.S_ISCHR(mode) else
                "a block device" if stat.S_ISBLK(mode) else
                "a socket" if stat.S_ISSOCK(mode) else "a special file")
        raise ImageReadError(path, f"not a regular file: it is {kind}")


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """Gray float32 ``(H, W)`` from ``(H, W, 3)`` RGB with the BT.601 luma weights."""
    return np.tensordot(rgb.astype(np.float32, copy=False), _LUMA, axes=([-1], [0]))


def _read(path: Path, *, max_pixels: int, invert_monochrome1: bool) -> XrayImage:
    fmt = detect_format(path)
    if fmt == "dicom":
        pixels, fields = read_dicom(path, max_pixels=max_pixels,
                                    invert_monochrome1=invert_monochrome1)
    else:
        pixels, fields = _read_pil(path, fmt, max_pixels)
    if pixels.ndim == 3:
        pixels = rgb_to_gray(pixels[..., :3])
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    if not pixels.flags.writeable:  # a view of Pillow's buffer
        pixels = pixels.copy()
    if pixels.shape != tuple(fields["shape"]):
        raise ImageReadError(path, f"decoded image is {pixels.shape}, the header says "
                                   f"{tuple(fields['shape'])}")
    _check_values(path, pixels)
    return XrayImage(pixels=pixels, meta=ImageMeta(path=str(path), format=fmt, **fields))


def _check_values(path: Path, pixels: np.ndarray) -> None:
    """Refuse non-finite pixels and ranges that float32 arithmetic cannot represent."""
    if not np.isfinite(pixels).all():
        raise ImageReadError(path, "pixel values are not all finite (NaN or infinity after "
                                   "decoding and rescaling)")
    lo, hi = float(pixels.min()), float(pixels.max())
    if not np.isfinite(np.float32(hi) - np.float32(lo)) or max(abs(lo), abs(hi)) > _MAX_ABS_VALUE:
        raise ImageReadError(path, f"pixel values span [{lo:.3g}, {hi:.3g}], beyond the "
                                   f"representable range (|value| <= {_MAX_ABS_VALUE:.0e})")


#: Largest magnitude accepted after decoding and rescaling: the preprocessing subtracts
#: and scales in float32, which overflows for ranges near its maximum (3.4e38).
_MAX_ABS_VALUE = 1e30


def _read_pil(path: Path, fmt: str, max_pixels: int) -> tuple[np.ndarray, dict]:
    """Decode a PNG or JPEG with Pillow after checking its size and structure."""
    name = fmt.upper()
    with warnings.catch_warnings():
        # our own limit replaces Pillow's decompression-bomb warning
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with decoding(path, f"corrupt {name} header"):
            try:
                image = Image.open(path, formats=[name])
            except Image.DecompressionBombError as err:
                raise ImageTooLargeError(path, f"{name} header declares an image too large "
                                               f"to decode ({err})") from err
    with image:
        cols, rows = image.size
        mode = image.mode
        bands = len(image.getbands())
        # what will be allocated: Pillow's buffer, then float32 per band
        check_geometry(path, rows, cols, max_pixels=max_pixels, samples=bands)
        data = None
        if fmt == "png":
            check_png_structure(path, max_pixels=max_pixels)
        else:
            data = check_jpeg_structure(path)
        with decoding(path, f"truncated or corrupt {name}"):
            image.load()
        if data is not None:
            check_scans_complete(path, data, lambda probed: _decodes_same(path, image, probed))
        with decoding(path, f"truncated or corrupt {name}"):
            array = _pil_to_array(image)
    fields = {"shape": (rows, cols), "photometric": mode, "transfer_syntax": None,
              "bits_stored": _BITS_BY_MODE.get(mode)}
    return array, fields


def _decodes_same(path: Path, image: Image.Image, data: bytes) -> bool:
    """Whether JPEG bytes held in memory decode to the pixels of the decoded ``image``
    (compared by Pillow, without copying either into an array)."""
    with decoding(path, "JPEG scan data ends early (decoding it with probe bytes after the "
                        "scan fails)"), warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # size checked before
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as probed:
            probed.load()
            if probed.size != image.size or probed.mode != image.mode:
                return False
            return ImageChops.difference(image, probed).getbbox() is None


def _pil_to_array(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("1", "L", "I", "F") or mode.startswith("I;16"):
        return np.asarray(image, dtype=np.float32)
    if mode in ("LA", "La"):
        return np.asarray(image.getchannel(0), dtype=np.float32)
    return np.asarray(image.convert("RGB"), dtype=np.float32)
