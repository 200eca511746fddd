"""Writing images atomically: a temporary file in the target folder, then ``os.replace``.

A reader (or a crash) never sees a half-written PNG: the target either keeps its old
content or holds the complete new file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2
import numpy as np


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``.

    Missing parent folders are created. The temporary file is removed if anything fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


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
