"""JPEG structure checks made before Pillow decodes (ITU-T T.81).

libjpeg-turbo decodes a JPEG whose scan data ends early (an EOI marker mid-scan, or a
frame header that promises far more lines than the file holds) by filling the missing
blocks, with a warning Pillow does not expose. :func:`check_jpeg_structure` walks the
markers up to the first scan and compares the size of the entropy-coded data with the
number of 8 x 8 blocks the frame header declares: Huffman coding spends at least one
bit on every block of every component (T.81 F.1.2: a DC difference code, or in
progressive DC scans one code a block), so a 4 KB file that declares 9000 x 9000
pixels is refused before anything is allocated.

A scan cut short by less than that bound still decodes as filled blocks, and telling how
many blocks a scan holds would take Huffman-decoding it. :func:`check_scans_complete`
asks the decoder instead: it decodes the file a second time with a run of non-marker
bytes inserted where each scan's entropy-coded data ends (before the marker that follows
it). A decoder that has all the blocks a scan declares stops reading before those bytes
and skips them on its way to the next marker (T.81 B.1.1.2 allows no data there, and
libjpeg-turbo only warns about "extraneous bytes"), so a complete file decodes to the
same pixels; a decoder still missing blocks reads the inserted bytes as Huffman codes
instead of the zero bits it fills in at a marker, and the pixels differ. The exception is
a scan with restart markers that ends exactly at a restart interval: the decoder looks
for the next RSTn marker and skips the inserted bytes there too; for those
:func:`check_restart_count` counts the RSTn markers against the MCUs the frame declares.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable, Iterator
from pathlib import Path


from cxrlab.errors import ImageReadError

#: Start-of-frame markers coded with Huffman tables (sequential, progressive, lossless).
_HUFFMAN_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7}
#: Arithmetic-coded frames (can spend less than a bit a block: not bounded here).
_ARITHMETIC_SOF = {0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}
#: The marker that ends entropy-coded data: FF then neither a stuffed 00, an RSTn nor a
#: fill byte FF (T.81 B.1.1.2 and B.1.1.5); fill bytes before it are stepped back over.
_MARKER_AFTER_SCAN = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")
_RESTART = re.compile(rb"\xff[\xd0-\xd7]")
#: Bytes inserted after each scan: no FF (so no marker), a varied bit pattern (so a
#: decoder that reads them gets codes other than the zero bits libjpeg-turbo fills in).
_PROBE = bytes((0xA5 + 167 * i) % 0xFF for i in range(64))


def check_jpeg_structure(path: str | Path) -> bytes:
    """Refuse a JPEG whose scan data is too short for the frame its header declares.

    Returns:
        The file's bytes (for :func:`check_scans_complete`).

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
        return data
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
        return data  # the height comes in a DNL marker after the scan: Pillow decides
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
    return data


def _segments(data: bytes) -> Iterator[tuple[int, bytes, int, int]]:
    """``(marker, body, start, end)`` of each marker segment after SOI, up to EOI.

    For an SOS segment, ``start``-``end`` is its entropy-coded data, up to the next marker
    (or the end of ``data`` when none follows); for the others, the segment itself.
    Lenient: stops where the structure breaks (:func:`check_jpeg_structure` reports that).
    """
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker == 0xD9:
            return
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        body, start = data[pos + 4:pos + 2 + length], pos
        pos += 2 + length
        if marker == 0xDA:
            found = _MARKER_AFTER_SCAN.search(data, pos)
            end = found.start() if found else len(data)
            while found and end > pos and data[end - 1] == 0xFF:
                end -= 1
            start, pos = pos, end
        yield marker, body, start, pos


def scan_ends(data: bytes) -> list[int]:
    """Byte offsets where the entropy-coded data of each scan ends (its next marker).

    A scan that runs to the end of ``data`` without a marker adds no offset (such a file
    is truncated, which the decoder reports by itself).
    """
    return [end for marker, _, _, end in _segments(data) if marker == 0xDA and end < len(data)]


def check_scans_complete(path: str | Path, data: bytes,
                         decodes_same: Callable[[bytes], bool]) -> None:
    """Refuse a JPEG whose scans end before all the blocks its frame declares.

    Args:
        path: The file (named in the message).
        data: The JPEG bytes (a file, or one frame of a DICOM), already decoded once.
        decodes_same: Whether the given bytes decode, with the decoder that decoded
            ``data``, to the same pixels as ``data`` did.

    Raises:
        ImageReadError: The pixels change when bytes are inserted after the scans (see the
            module docstring), or too few restart markers.
    """
    segments = list(_segments(data))
    ends = [end for marker, _, _, end in segments if marker == 0xDA and end < len(data)]
    if not ends:
        return
    check_restart_count(path, data, segments)
    pieces, start = [], 0
    for end in ends:
        pieces += [data[start:end], _PROBE]
        start = end
    if not decodes_same(b"".join(pieces) + data[start:]):
        raise ImageReadError(path, "JPEG scan data ends before all the blocks its frame header "
                                   "declares (an end-of-image marker mid-scan, or a frame "
                                   "header with more lines or columns than the scan holds): "
                                   "the decoder would fill the rest")


def check_restart_count(path: str | Path, data: bytes,
                        segments: list[tuple[int, bytes, int, int]] | None = None) -> None:
    """Refuse a one-scan sequential JPEG with fewer RSTn markers than its MCUs need.

    Only a baseline or extended sequential frame (SOF0/SOF1) coded as one interleaved scan
    of all its components with a restart interval is counted: there the scan holds
    ``ceil(MCUs / interval) - 1`` restart markers (T.81 E.1.4); other files pass.

    Args:
        path: The file (named in the message).
        data: The JPEG bytes.
        segments: ``_segments(data)``, when the caller has them already.

    Raises:
        ImageReadError: Fewer restart markers than that.
    """
    frame, interval, scans = None, 0, []
    for marker, body, start, end in (segments if segments is not None else _segments(data)):
        if marker in (0xC0, 0xC1) and len(body) >= 6:
            frame = body
        elif marker == 0xDD and len(body) >= 2:
            (interval,) = struct.unpack(">H", body[:2])
        elif marker == 0xDA:
            scans.append((body, interval, start, end))
    if frame is None or len(scans) != 1:
        return
    body, interval, start, end = scans[0]
    _precision, lines, samples, count = struct.unpack(">BHHB", frame[:6])
    if not interval or not lines or not samples or not body or body[0] != count \
            or len(frame) < 6 + 3 * count:
        return
    factors = [(frame[7 + 3 * i] >> 4, frame[7 + 3 * i] & 0x0F) for i in range(count)]
    if any(h == 0 or v == 0 for h, v in factors):
        return
    if count == 1:  # a single component is not interleaved: one block an MCU
        mcus = math.ceil(samples / 8) * math.ceil(lines / 8)
    else:
        h_max, v_max = max(h for h, _ in factors), max(v for _, v in factors)
        mcus = math.ceil(samples / (8 * h_max)) * math.ceil(lines / (8 * v_max))
    expected = math.ceil(mcus / interval) - 1
    found = len(_RESTART.findall(data, start, end))
    if found < expected:
        raise ImageReadError(path, f"JPEG scan holds {found} restart markers, its {mcus} MCUs "
                                   f"with a restart interval of {interval} need {expected}: the "
                                   "scan data ends early")
