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

PNG and JPEG are decoded by Pillow with ``ImageFile.LOAD_TRUNCATED_IMAGES`` left at its
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

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxrlab.errors import ImageReadError, ImageTooLargeError, MissingFileError
from cxrlab.io.dicom import looks_like_dicom, read_dicom

DEFAULT_MAX_PIXELS = 100_000_000

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8\xff"
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, UnidentifiedImageError)
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
    if not path.is_file():
        problem = "is a directory, not an image file" if path.is_dir() else "file not found"
        raise MissingFileError(path, problem)
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError as err:
        raise ImageReadError(path, f"cannot open file: {err.strerror or err}") from err
    if not head:
        raise ImageReadError(path, "file is empty (0 bytes)")
    if head.startswith(_PNG_SIGNATURE):
        return "png"
    if head.startswith(_JPEG_SOI):
        return "jpeg"
    if looks_like_dicom(head):
        return "dicom"
    raise ImageReadError(path, f"not a DICOM, PNG or JPEG file (starts with {head[:8]!r})")


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
    return XrayImage(pixels=pixels, meta=ImageMeta(path=str(path), format=fmt, **fields))


def _read_pil(path: Path, fmt: str, max_pixels: int) -> tuple[np.ndarray, dict]:
    """Decode a PNG or JPEG with Pillow after checking its size from the header."""
    name = fmt.upper()
    with warnings.catch_warnings():
        # our own limit replaces Pillow's decompression-bomb warning
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(path, formats=[name])
        except Image.DecompressionBombError as err:
            raise ImageTooLargeError(path, f"{name} header declares an image too large to "
                                           f"decode ({err})") from err
        except _PIL_ERRORS as err:
            raise ImageReadError(path, f"corrupt {name} header: {err}") from err
    with image:
        cols, rows = image.size
        if rows * cols > max_pixels:
            raise ImageTooLargeError(path, f"image is {rows} x {cols} = {rows * cols} pixels, "
                                           f"above the limit of {max_pixels} (max_pixels)")
        mode = image.mode
        try:
            if fmt == "png":
                _verify_png(path)
            image.load()
            array = _pil_to_array(image)
        except _PIL_ERRORS as err:
            raise ImageReadError(path, f"truncated or corrupt {name}: {err}") from err
    fields = {"shape": (rows, cols), "photometric": mode, "transfer_syntax": None,
              "bits_stored": _BITS_BY_MODE.get(mode)}
    return array, fields


def _verify_png(path: Path) -> None:
    """Check every PNG chunk's CRC and that the file reaches IEND (cheap: no inflate)."""
    with Image.open(path, formats=["PNG"]) as probe:
        probe.verify()


def _pil_to_array(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("1", "L", "I", "F") or mode.startswith("I;16"):
        return np.asarray(image, dtype=np.float32)
    if mode in ("LA", "La"):
        return np.asarray(image.getchannel(0), dtype=np.float32)
    return np.asarray(image.convert("RGB"), dtype=np.float32)
