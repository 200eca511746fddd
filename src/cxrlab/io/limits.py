"""The bounds every reader checks before it allocates: pixels, aspect ratio, bytes.

The pixel limit applies to what will be allocated, not only to ``rows * cols``: the
samples per pixel and the bytes of each are counted, and the preprocessing checks the
padded square against the same limit (:func:`cxrlab.data.transforms.preprocess`).
Compressed inputs are inflated with a cap of :func:`max_decoded_bytes` before anything
trusts their size.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

from cxrlab.errors import ImageReadError, ImageTooLargeError

DEFAULT_MAX_PIXELS = 100_000_000
#: Largest accepted ratio of the long side to the short side. Chest radiographs are
#: between 1:1.5 and 1.5:1; a 20:1 strip is a corrupt header, not a radiograph, and
#: padding it to a square would spend memory on nothing but zeros.
MAX_ASPECT_RATIO = 20.0
#: Largest sample (bytes) a decoded pixel may hold: float32 per band after decoding.
BYTES_PER_SAMPLE = 4


def max_decoded_bytes(max_pixels: int) -> int:
    """Bytes a decoded image (or an inflated DICOM data set) may take: 4 bytes for each
    allowed pixel (16-bit gray, 8-bit RGB and float32 fit), plus 16 MiB for headers."""
    return max_pixels * BYTES_PER_SAMPLE + (16 << 20)


def check_geometry(path: str | Path, rows: int, cols: int, *, max_pixels: int,
                   samples: int = 1, frames: int = 1) -> None:
    """Refuse empty, oversized or degenerate geometry before any pixel is decoded.

    Args:
        path: The file (named in the message).
        rows, cols: The declared size.
        max_pixels: Largest ``frames * rows * cols`` accepted.
        samples: Samples (bands) per pixel that will be allocated.
        frames: Frames that will be decoded.

    Raises:
        ImageReadError: A zero or negative side, or an aspect ratio above
            :data:`MAX_ASPECT_RATIO`.
        ImageTooLargeError: More than ``max_pixels`` pixels.
    """
    if rows <= 0 or cols <= 0:
        raise ImageReadError(path, f"image size {rows} x {cols} is empty")
    pixels = frames * rows * cols
    if pixels > max_pixels:
        raise ImageTooLargeError(path, f"image is {rows} x {cols}"
                                       + (f" x {frames} frames" if frames > 1 else "")
                                       + f" = {pixels} pixels, above the limit of "
                                         f"{max_pixels} (max_pixels)")
    if pixels * samples * BYTES_PER_SAMPLE > max_decoded_bytes(max_pixels):
        raise ImageTooLargeError(path, f"image is {rows} x {cols} with {samples} samples per "
                                       f"pixel, more than the pixel limit allows to decode")
    ratio = max(rows, cols) / min(rows, cols)
    if ratio > MAX_ASPECT_RATIO:
        raise ImageReadError(path, f"image is {rows} x {cols}: aspect ratio {ratio:.0f}:1 is "
                                   f"above {MAX_ASPECT_RATIO:.0f}:1 (a corrupt header, not a "
                                   "radiograph)")


def limit_address_space(extra_mb: int) -> int:
    """Cap this process's address space (``RLIMIT_AS``) at its current size plus ``extra_mb``.

    Meant for a child process that decodes untrusted files, called after its imports: an
    allocation beyond the cap then raises :class:`MemoryError` (or ends a native codec)
    in the child instead of swapping the machine.

    Returns:
        The limit set, in bytes.
    """
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[0])
    limit = pages * os.sysconf("SC_PAGE_SIZE") + extra_mb * (1 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return limit
