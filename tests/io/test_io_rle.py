"""Kaggle SIIM RLE: orientation, the reference implementation, the real CSV, bad input."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from cxrlab.errors import CSVFormatError, MissingFileError, RLEError
from cxrlab.io.rle import masks_union, parse_rle, read_rle_csv, rle_decode, rle_encode

SIIM_CSV = "siim-pneumothorax-train-rle.csv.gz"


def _reference_rle2mask(rle: str, width: int, height: int) -> np.ndarray:
    """The challenge's mask_functions.rle2mask (as torchxrayvision copies it), then ``.T``."""
    mask = np.zeros(width * height)
    array = np.asarray([int(x) for x in rle.split()])
    starts, lengths = array[0::2], array[1::2]
    current_position = 0
    for index, start in enumerate(starts):
        current_position += start
        mask[current_position:current_position + lengths[index]] = 255
        current_position += lengths[index]
    return mask.reshape(width, height).T


def _reference_mask2rle(img: np.ndarray, width: int, height: int) -> str:
    """The challenge's mask_functions.mask2rle; ``img`` is indexed [x][y] (a transposed mask)."""
    rle: list[str] = []
    last_color, current_pixel, run_start, run_length = 0, 0, -1, 0
    for x in range(width):
        for y in range(height):
            current_color = img[x][y]
            if current_color != last_color:
                if current_color == 255:
                    run_start, run_length = current_pixel, 1
                else:
                    rle += [str(run_start), str(run_length)]
                    run_start, run_length, current_pixel = -1, 0, 0
            elif run_start > -1:
                run_length += 1
            last_color = current_color
            current_pixel += 1
    return " ".join(rle)


def test_single_pixel_orientation():
    height, width, y, x = 7, 9, 3, 5
    mask = np.zeros((height, width), dtype=bool)
    mask[y, x] = True
    assert rle_encode(mask) == f"{x * height + y} 1" == "38 1"  # 0-based, column-major
    decoded = rle_decode("38 1", width=width, height=height)
    assert decoded.shape == (height, width)
    assert list(zip(*np.nonzero(decoded))) == [(y, x)]


def test_relative_starts_hand_example():
    # runs at pixels 2-4 and 9 (gap of 4 after the first run ends at 5), column-major in 4 x 3
    decoded = rle_decode("2 3 4 1", width=3, height=4)
    flat = np.flatnonzero(decoded.T.ravel())
    assert flat.tolist() == [2, 3, 4, 9]
    assert decoded[2, 0] and decoded[3, 0] and decoded[0, 1] and decoded[1, 2]
    assert rle_encode(decoded) == "2 3 4 1"


def test_matches_reference_implementation_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(20):
        height, width = rng.integers(5, 20, size=2)
        mask = rng.random((height, width)) < 0.3
        mask[-1, -1] = False  # the reference drops a run that reaches the last pixel
        reference = _reference_mask2rle((mask.T * 255).astype(np.uint8), width, height)
        ours = rle_encode(mask)
        assert ours == (reference or "-1")
        if mask.any():
            np.testing.assert_array_equal(_reference_rle2mask(ours, width, height) > 0, mask)
            np.testing.assert_array_equal(rle_decode(ours, width=width, height=height), mask)


def test_run_reaching_last_pixel_is_kept():
    mask = np.zeros((4, 4), dtype=bool)
    mask[2:, 3] = True
    assert rle_encode(mask) == "14 2"
    np.testing.assert_array_equal(rle_decode("14 2", 4, 4), mask)


def test_empty():
    assert rle_encode(np.zeros((8, 8), dtype=np.uint8)) == "-1"
    assert not rle_decode("-1").any() and rle_decode(" -1 ").shape == (1024, 1024)
    assert rle_encode(np.full((2, 3), 7)) == "0 6"


@pytest.mark.slow  # ~6 s on an idle core: 12954 full 1024 x 1024 decodes and encodes
def test_every_row_of_the_siim_csv_round_trips(xrv_data):
    table = read_rle_csv(xrv_data / SIIM_CSV)
    rows = images = positive = 0
    for image_id, rles in table.items():
        images += 1
        positive += any(rle != "-1" for rle in rles)
        for rle in rles:
            rows += 1
            decoded = rle_decode(rle, source=image_id)
            assert rle_encode(decoded) == rle, image_id
    # torchxrayvision's copy of the stage-1 train-rle.csv
    assert (rows, images, positive) == (12954, 12047, 2669)


def test_real_rows_match_reference_decoder(xrv_data):
    table = read_rle_csv(xrv_data / SIIM_CSV)
    positives = [rles for rles in table.values() if rles[0] != "-1"][:5]
    for rles in positives:
        np.testing.assert_array_equal(rle_decode(rles[0]),
                                      _reference_rle2mask(rles[0], 1024, 1024) > 0)


def test_read_csv_plain_and_gzip_with_kaggle_header(tmp_path):
    text = ("ImageId, EncodedPixels\n"
            "img.1, 0 2 3 1\n"
            "img.2,-1\n"
            " img.1 ,10 4 \n")
    (tmp_path / "rle.csv").write_text(text)
    (tmp_path / "rle.csv.gz").write_bytes(gzip.compress(text.encode()))
    (tmp_path / "gz_without_suffix.csv").write_bytes(gzip.compress(text.encode()))
    for name in ("rle.csv", "rle.csv.gz", "gz_without_suffix.csv"):
        table = read_rle_csv(tmp_path / name)
        assert table == {"img.1": ["0 2 3 1", "10 4"], "img.2": ["-1"]}
    union = masks_union(table["img.1"], 4, 5)
    expected = rle_decode("0 2 3 1", 4, 5) | rle_decode("10 4", 4, 5)
    np.testing.assert_array_equal(union, expected)
    assert union.sum() == 7


def test_read_csv_errors(tmp_path):
    with pytest.raises(MissingFileError):
        read_rle_csv(tmp_path / "absent.csv")
    (tmp_path / "cols.csv").write_text("ImageId,Mask\na,-1\n")
    with pytest.raises(CSVFormatError, match="cols.csv: RLE CSV needs columns"):
        read_rle_csv(tmp_path / "cols.csv")
    (tmp_path / "odd.csv").write_text("ImageId, EncodedPixels\na,-1\nb,1 2 3\n")
    with pytest.raises(RLEError, match=r"odd.csv:3 \(ImageId b\): RLE has 3 numbers"):
        read_rle_csv(tmp_path / "odd.csv")
    (tmp_path / "text.csv").write_text("ImageId, EncodedPixels\nc,1 x\n")
    with pytest.raises(RLEError, match=r"text.csv:2 \(ImageId c\): RLE token 'x'"):
        read_rle_csv(tmp_path / "text.csv")
    (tmp_path / "noid.csv").write_text("ImageId, EncodedPixels\n,1 2\n")
    with pytest.raises(CSVFormatError, match="noid.csv:2: empty ImageId"):
        read_rle_csv(tmp_path / "noid.csv")


def test_decode_errors():
    with pytest.raises(RLEError, match="img7: RLE run ends at pixel 17, past the 4 x 4 image"):
        rle_decode("10 3 2 2", width=4, height=4, source="img7")
    with pytest.raises(RLEError, match="1.5"):
        rle_decode("1.5 2")
    with pytest.raises(RLEError, match="negative"):
        rle_decode("3 2 -1 1")
    with pytest.raises(RLEError, match="not positive"):
        rle_decode("3 0")
    with pytest.raises(RLEError, match="pairs"):
        parse_rle("3")
    with pytest.raises(RLEError, match="past"):
        masks_union(["0 1", "0 20"], 4, 4, source="x")
