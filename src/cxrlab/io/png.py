"""PNG structure checks made before Pillow decodes (PNG specification, 3rd edition).

Pillow decodes a PNG whose IHDR promises more rows than its image data holds into an
image whose missing rows are zero, without an error. :func:`check_png_structure` walks
the chunks (IHDR first and 13 bytes long, at least one IDAT, IDAT chunks consecutive,
IEND last, every CRC correct) and inflates the image data in bounded pieces, without
keeping it, to check that it holds exactly the filtered scanlines IHDR promises
(interlaced images: the seven Adam7 passes), so a doubled height or a cut stream is
refused before decoding. It reads the file once and never holds more than one chunk
plus one inflated piece.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from cxrlab.errors import ImageReadError, ImageTooLargeError
from cxrlab.io.limits import max_decoded_bytes

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Samples per pixel by colour type, and the bit depths each allows.
_COLOUR_TYPES = {0: (1, (1, 2, 4, 8, 16)), 2: (3, (8, 16)), 3: (1, (1, 2, 4, 8)),
                 4: (2, (8, 16)), 6: (4, (8, 16))}
#: Adam7 passes: (x start, y start, x step, y step).
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))
_PIECE = 1 << 20


def expected_scanline_bytes(width: int, height: int, samples: int, depth: int,
                            interlaced: bool) -> int:
    """Bytes of filtered scanlines (one filter byte a row) the image data must inflate to."""
    def rows_bytes(w: int, h: int) -> int:
        return 0 if w == 0 or h == 0 else h * (1 + (w * samples * depth + 7) // 8)

    if not interlaced:
        return rows_bytes(width, height)
    total = 0
    for x0, y0, dx, dy in _ADAM7:
        total += rows_bytes((width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy)
    return total


def check_png_structure(path: str | Path, *, max_pixels: int) -> None:
    """Refuse a PNG whose chunks or image data disagree with its header.

    Raises:
        ImageReadError: Bad signature, chunk order, CRC or IHDR field; image data that
            inflates to fewer or more bytes than IHDR promises, or a cut zlib stream.
        ImageTooLargeError: IHDR declares more than the pixel limit allows.
    """
    path = Path(path)
    with path.open("rb") as handle:
        if handle.read(8) != _SIGNATURE:
            raise ImageReadError(path, "not a PNG (bad signature)")
        expected = None
        inflater = zlib.decompressobj()
        inflated = 0
        idat_state = "before"        # before -> inside -> after
        first = True
        while True:
            head = handle.read(8)
            if len(head) < 8:
                raise ImageReadError(path, "truncated or corrupt PNG: it ends before its IEND chunk")
            length, kind = struct.unpack(">I4s", head)
            if length > 0x7FFFFFFF:
                raise ImageReadError(path, f"PNG chunk {kind!r} declares length {length}, above "
                                           "2^31 - 1")
            if kind == b"IDAT":
                data = b""
                remaining = length
                crc = zlib.crc32(kind)
                if idat_state == "after":
                    raise ImageReadError(path, "PNG has IDAT chunks that are not consecutive")
                if expected is None:
                    raise ImageReadError(path, "PNG has IDAT before IHDR")
                idat_state = "inside"
                while remaining:
                    piece = handle.read(min(remaining, _PIECE))
                    if not piece:
                        raise ImageReadError(path, "truncated or corrupt PNG: it ends inside an IDAT chunk")
                    remaining -= len(piece)
                    crc = zlib.crc32(piece, crc)
                    inflated += _inflate(path, inflater, piece, expected - inflated)
            else:
                if length > (64 << 20):
                    raise ImageReadError(path, f"PNG chunk {kind!r} is {length} bytes long")
                data = handle.read(length)
                if len(data) < length:
                    raise ImageReadError(path, f"truncated or corrupt PNG: it ends inside its {kind!r} chunk")
                crc = zlib.crc32(data, zlib.crc32(kind))
                if idat_state == "inside":
                    idat_state = "after"
            stored = handle.read(4)
            if len(stored) < 4 or struct.unpack(">I", stored)[0] != (crc & 0xFFFFFFFF):
                raise ImageReadError(path, f"PNG chunk {kind!r} has a bad CRC (corrupt file)")
            if first:
                if kind != b"IHDR" or length != 13:
                    raise ImageReadError(path, "PNG does not start with a 13-byte IHDR chunk")
                expected = _ihdr(path, data, max_pixels)
                first = False
            elif kind == b"IHDR":
                raise ImageReadError(path, "PNG has a second IHDR chunk")
            if kind == b"IEND":
                break
    if idat_state == "before":
        raise ImageReadError(path, "PNG has no IDAT chunk (no image data)")
    if not inflater.eof:
        raise ImageReadError(path, f"truncated or corrupt PNG: its image data is cut short: {inflated} of {expected} "
                                   "bytes inflate, and the zlib stream does not end")
    if inflated != expected:
        raise ImageReadError(path, f"PNG image data inflates to {inflated} bytes, IHDR "
                                   f"promises {expected}")


def _inflate(path: Path, inflater: zlib._Decompress, data: bytes, room: int) -> int:
    """Inflate ``data`` in pieces, discarding the output; more than ``room`` bytes is an error."""
    count = 0
    while data and not inflater.eof:
        try:
            out = inflater.decompress(data, _PIECE)
        except zlib.error as err:
            raise ImageReadError(path, f"PNG image data is not a valid zlib stream: {err}") from err
        count += len(out)
        if count > room:
            raise ImageReadError(path, "PNG image data inflates to more bytes than IHDR "
                                       "promises")
        data = inflater.unconsumed_tail
    return count


def _ihdr(path: Path, data: bytes, max_pixels: int) -> int:
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", data)
    if colour not in _COLOUR_TYPES or depth not in _COLOUR_TYPES[colour][1]:
        raise ImageReadError(path, f"PNG IHDR has bit depth {depth} with colour type {colour}, "
                                   "which the PNG specification does not allow")
    if compression != 0 or filtering != 0 or interlace not in (0, 1):
        raise ImageReadError(path, "PNG IHDR has an unknown compression, filter or interlace "
                                   "method")
    if width == 0 or height == 0:
        raise ImageReadError(path, f"PNG IHDR declares an empty image ({width} x {height})")
    samples = _COLOUR_TYPES[colour][0]
    expected = expected_scanline_bytes(width, height, samples, depth, bool(interlace))
    if expected > max_decoded_bytes(max_pixels):
        raise ImageTooLargeError(path, f"PNG IHDR declares {height} x {width}, more than the "
                                       "pixel limit allows to decode")
    return expected
