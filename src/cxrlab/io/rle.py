"""Kaggle SIIM-ACR pneumothorax run-length encoding (``train-rle.csv``).

Format, as implemented by the challenge's reference ``mask_functions.py``
(``mask2rle``/``rle2mask``, reproduced in torchxrayvision's
``SIIM_Pneumothorax_Dataset.get_pathology_mask_dict``):

- Pixels are numbered **column-major**, starting at **0**: pixel ``(row y, col x)`` of an
  image ``height`` rows tall has index ``x * height + y``. The reference builds the flat
  mask, reshapes it to ``(width, height)`` (so it is indexed ``[x, y]``) and transposes
  it (``rle2mask(rle, 1024, 1024).T``) to get image orientation; ``mask2rle`` walks
  ``for x in range(width): for y in range(height)`` over the transposed mask.
- The string is pairs ``start length``. Each ``start`` is **relative**: the number of
  background pixels between the end of the previous run and the start of this one (the
  first start counts from pixel 0). The reference decoder does
  ``pos += start; mask[pos:pos + length] = 1; pos += length``.
- ``-1`` means an empty mask; the images are 1024 x 1024.

So a mask whose only foreground pixel is at row ``y``, column ``x`` encodes as
``f"{x * height + y} 1"`` (0-based; the generic Kaggle format is absolute and 1-based,
which this is not). Two runs are never adjacent: a run followed by one with start 0
would be the same pixels as a single longer run. The train-rle.csv shipped with
torchxrayvision round-trips exactly through :func:`rle_decode` and :func:`rle_encode`.
The one deviation from ``mask2rle``: that function drops a run that reaches the very
last pixel (it only emits a run when it ends); :func:`rle_encode` emits it.

Decoded masks are bool ``(height, width)`` in image orientation (row = y, col = x).
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import numpy as np

from cxrlab.errors import CSVFormatError, MissingFileError, RLEError

EMPTY = "-1"
_GZIP_MAGIC = b"\x1f\x8b"


def parse_rle(rle: str, *, source: str | None = None) -> np.ndarray:
    """Parse an RLE string into int64 ``(n_runs, 2)`` rows of (relative start, length).

    Args:
        rle: The encoded pixels; ``"-1"`` (or blank) gives zero runs.
        source: Where the string came from (file:row, image id), for error messages.

    Raises:
        RLEError: A token is not an integer, the token count is odd, a start is
            negative or a length is not positive.
    """
    text = rle.strip()
    if text in ("", EMPTY):
        return np.zeros((0, 2), dtype=np.int64)
    tokens = text.split()
    try:
        values = np.array(tokens, dtype=np.int64)
    except (ValueError, OverflowError) as err:
        bad = next((t for t in tokens if not t.lstrip("+-").isdigit()), tokens[0])
        raise RLEError(source, f"RLE token {bad!r} is not an integer ({err})") from err
    if values.size % 2:
        raise RLEError(source, f"RLE has {values.size} numbers; it needs (start, length) pairs")
    runs = values.reshape(-1, 2)
    if (runs[:, 0] < 0).any():
        raise RLEError(source, f"RLE start {int(runs[runs[:, 0] < 0][0, 0])} is negative")
    if (runs[:, 1] <= 0).any():
        raise RLEError(source, f"RLE length {int(runs[runs[:, 1] <= 0][0, 1])} is not positive")
    return runs


def rle_decode(rle: str, width: int = 1024, height: int = 1024, *,
               source: str | None = None) -> np.ndarray:
    """Decode a Kaggle SIIM RLE string into a bool ``(height, width)`` mask.

    Args:
        rle: Relative (start, length) pairs, or ``"-1"`` for an empty mask.
        width: Image width (columns).
        height: Image height (rows).
        source: The image id or file:row, named in error messages.

    Returns:
        The mask as a transposed (Fortran-ordered) view of the column-major pixel
        array, which keeps decoding and re-encoding cheap; use
        ``np.ascontiguousarray`` where C order matters.

    Raises:
        RLEError: Malformed string, or a run that ends past the last pixel.

    Example:
        >>> rle_decode("5 2", width=2, height=4).astype(int).tolist()
        [[0, 0], [0, 1], [0, 1], [0, 0]]
    """
    n_pixels = _n_pixels(width, height)
    runs = parse_rle(rle, source=source)
    flat = np.zeros(n_pixels, dtype=bool)
    if len(runs):
        ends = np.cumsum(runs[:, 0] + runs[:, 1])
        starts = ends - runs[:, 1]
        if ends[-1] > n_pixels:
            raise RLEError(source, f"RLE run ends at pixel {int(ends[-1])}, past the "
                                   f"{width} x {height} image ({n_pixels} pixels)")
        lengths = runs[:, 1]
        # index of every foreground pixel: its run's start plus its offset in the run
        offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        flat[np.repeat(starts, lengths) + offsets] = True
    # indexed [x, y] after the reshape; the transpose is a view (Fortran-ordered)
    return flat.reshape(width, height).T


def rle_encode(mask: np.ndarray) -> str:
    """Encode a mask (image orientation, nonzero = inside) as a Kaggle SIIM RLE string.

    Returns:
        Space-separated relative (start, length) pairs, or ``"-1"`` when the mask is empty.

    Raises:
        ValueError: ``mask`` is not 2-D.

    Example:
        >>> mask = np.zeros((4, 2), dtype=bool); mask[1:3, 1] = True
        >>> rle_encode(mask)
        '5 2'
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"rle_encode needs a 2-D mask, got shape {mask.shape}")
    # column-major order; a view when the mask is itself a transposed view (rle_decode's)
    flat = np.ascontiguousarray(mask.T).ravel().astype(bool, copy=False)
    inside = np.flatnonzero(flat)
    if inside.size == 0:
        return EMPTY
    breaks = np.flatnonzero(np.diff(inside) != 1) + 1  # first pixel of every run but the first
    starts = inside[np.concatenate(([0], breaks))]
    ends = inside[np.concatenate((breaks - 1, [inside.size - 1]))] + 1
    previous_ends = np.concatenate(([0], ends[:-1]))
    pairs = np.stack([starts - previous_ends, ends - starts], axis=1).ravel()
    return " ".join(map(str, pairs.tolist()))


def masks_union(rles: list[str], width: int = 1024, height: int = 1024, *,
                source: str | None = None) -> np.ndarray:
    """Union (logical or) of several RLE masks of one image, bool ``(height, width)``."""
    union = np.zeros((height, width), dtype=bool)
    for rle in rles:
        union |= rle_decode(rle, width, height, source=source)
    return union


def read_rle_csv(path: str | Path) -> dict[str, list[str]]:
    """Read a SIIM RLE CSV (plain or gzip, detected by content) into image id -> RLE rows.

    The Kaggle header is ``ImageId, EncodedPixels`` (with a space); column names and
    cells are stripped of whitespace. An image with several annotated regions has
    several rows; they are kept in file order. Every row's syntax is checked here, so an
    error names the file and row; runs past the image are checked by :func:`rle_decode`.

    Raises:
        MissingFileError: ``path`` does not exist.
        CSVFormatError: Unreadable file, missing ImageId/EncodedPixels column, or a row
            with an empty image id.
        RLEError: A malformed RLE cell (naming file, row and image id).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "RLE CSV not found")
    try:
        raw = path.read_bytes()
        if raw.startswith(_GZIP_MAGIC):
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8-sig")
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as err:
        raise CSVFormatError(path, f"cannot read the RLE CSV: {err}") from err
    reader = csv.reader(io.StringIO(text))
    header = [name.strip() for name in next(reader, [])]
    lowered = [name.lower() for name in header]
    missing = [c for c in ("imageid", "encodedpixels") if c not in lowered]
    if missing:
        raise CSVFormatError(path, f"RLE CSV needs columns 'ImageId' and 'EncodedPixels', "
                                   f"found {header}")
    id_col, rle_col = lowered.index("imageid"), lowered.index("encodedpixels")
    result: dict[str, list[str]] = {}
    for line, row in enumerate(reader, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) <= max(id_col, rle_col):
            raise CSVFormatError(f"{path}:{line}", f"row has {len(row)} cells, expected "
                                                   f"{len(header)}")
        image_id, rle = row[id_col].strip(), row[rle_col].strip()
        if not image_id:
            raise CSVFormatError(f"{path}:{line}", "empty ImageId")
        parse_rle(rle, source=f"{path}:{line} (ImageId {image_id})")
        result.setdefault(image_id, []).append(rle if rle else EMPTY)
    return result


def _n_pixels(width: int, height: int) -> int:
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"RLE image size must be positive, got {width} x {height}")
    return int(width) * int(height)
