"""JPEG structure checks made before Pillow decodes (ITU-T T.81).

libjpeg-turbo decodes a JPEG whose scan data ends early (an EOI marker mid-scan, or a
frame header that promises far more lines than the file holds) by filling the missing
blocks, with a warning Pillow does not expose. :func:`check_jpeg_structure` walks the
markers up to the first scan and compares the size of the entropy-coded data with the
number of 8 x 8 blocks the frame header declares: Huffman coding spends at least one
bit on every block of every component (T.81 F.1.2: a DC difference code, or in
progressive DC scans one code a block), so a 4 KB file that declares 9000 x 9000
pixels is refused before anything is allocated. A scan cut short by less than that
bound still decodes as filled blocks: see ``tests/io/test_fuzz.py::KNOWN_GAPS``.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

from cxrlab.errors import ImageReadError

#: Start-of-frame markers coded with Huffman tables (sequential, progressive, lossless).
_HUFFMAN_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7}
#: Arithmetic-coded frames (can spend less than a bit a block: not bounded here).
_ARITHMETIC_SOF = {0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}


def check_jpeg_structure(path: str | Path) -> None:
    """Refuse a JPEG whose scan data is too short for the frame its header declares.

    Raises:
        ImageReadError: No SOI, no frame header before the first scan, a marker segment
            running past the end, or fewer scan bits than declared blocks.
    """
    path = Path(path)
    data = path.read_bytes()
    if data[:2] != b"\xff\xd8":
        raise ImageReadError(path, "not a JPEG (no SOI marker)")
    pos, frame = 2, None
    while True:
        while pos < len(data) and data[pos] == 0xFF and pos + 1 < len(data) \
                and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes
        if pos + 4 > len(data) or data[pos] != 0xFF:
            raise ImageReadError(path, f"truncated or corrupt JPEG: no marker at byte {pos} "
                                       "before the first scan")
        marker = data[pos + 1]
        if marker in _STANDALONE:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        end = pos + 2 + length
        if length < 2 or end > len(data):
            raise ImageReadError(path, f"truncated or corrupt JPEG: marker segment FF{marker:02X} "
                                       "runs past the end of the file")
        if marker in _HUFFMAN_SOF or marker in _ARITHMETIC_SOF:
            frame = (marker, data[pos + 4:end])
        elif marker == 0xDA:
            break
        elif marker == 0xD9:
            raise ImageReadError(path, "JPEG ends (EOI) before its first scan")
        pos = end
    if frame is None:
        raise ImageReadError(path, "JPEG has no frame header (SOF) before its first scan")
    marker, body = frame
    if marker in _ARITHMETIC_SOF:
        return
    if len(body) < 6:
        raise ImageReadError(path, "JPEG frame header (SOF) is cut short")
    _precision, lines, samples, count = struct.unpack(">BHHB", body[:6])
    if len(body) < 6 + 3 * count or count == 0:
        raise ImageReadError(path, f"JPEG frame header declares {count} components but holds "
                                   "fewer")
    factors = [(body[7 + 3 * i] >> 4, body[7 + 3 * i] & 0x0F) for i in range(count)]
    if any(h == 0 or v == 0 for h, v in factors):
        raise ImageReadError(path, "JPEG frame header has a zero sampling factor")
    if lines == 0 or samples == 0:
        return  # the height comes in a DNL marker after the scan: Pillow decides
    h_max, v_max = max(h for h, _ in factors), max(v for _, v in factors)
    if marker == 0xC3 or marker == 0xC7:  # lossless: at least one bit a sample
        units = lines * samples * count
    else:
        units = sum(math.ceil(math.ceil(samples * h / h_max) / 8)
                    * math.ceil(math.ceil(lines * v / v_max) / 8) for h, v in factors)
    scan_bits = (len(data) - end) * 8
    if scan_bits < units:
        raise ImageReadError(path, f"JPEG declares {lines} x {samples} with {count} "
                                   f"component(s) ({units} blocks) but holds {scan_bits} bits "
                                   "of scan data, less than one bit a block: a cut file or an "
                                   "edited frame header")
