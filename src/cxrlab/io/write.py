"""Writing images atomically: a temporary file in the target folder, then ``os.replace``.

A reader (or a crash) never sees a half-written PNG: the target either keeps its old
content or holds the complete new file.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from cxrlab.utils import atomic_write


def write_bytes_atomic(path: str | Path, data: bytes, private: bool = False) -> None:
    """Write ``data`` to ``path`` through a synced temporary file and ``os.replace``.

    Missing parent folders are created; the temporary file is removed if anything fails.
    Permissions follow the umask, or ``0600`` with ``private`` (see :func:`cxrlab.utils.atomic_write`).
    """

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    atomic_write(path, write, private=private)


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Write a gray ``(H, W)`` image as a lossless PNG, atomically.

    Args:
        path: Target file (parent folders are created).
        array: ``uint8`` or ``uint16`` ``(H, W)``; a ``bool`` mask is written as
            8-bit 0/255.

    Raises:
        TypeError: ``array`` has another dtype.
        ValueError: ``array`` is not 2-D or is empty.
    """
    array = np.asarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * np.uint8(255)
    if array.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"write_png needs uint8, uint16 or bool pixels, got {array.dtype} "
                        f"for {path}")
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"write_png needs a non-empty (H, W) array, got shape {array.shape} "
                         f"for {path}")
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(array))
    if not ok:
        raise OSError(f"{path}: OpenCV could not encode the PNG")
    write_bytes_atomic(path, encoded.tobytes())
