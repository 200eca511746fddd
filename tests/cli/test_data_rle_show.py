"""``cxrlab data rle decode|encode`` and ``cxrlab data show`` through the Typer app."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cxrlab.cli.main import app
from cxrlab.io.rle import rle_decode

runner = CliRunner()
POSITIVE_ID = "1.2.276.0.7230010.3.1.4.8323329.13666.1517875247.117800"


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L"
        return np.asarray(image)


@pytest.fixture()
def rle_csv(tmp_path: Path) -> Path:
    path = tmp_path / "train-rle.csv"
    path.write_text("ImageId, EncodedPixels\n"
                    "two, 1 2 5 1\n"
                    "neg, -1\n"
                    "two, 12 3\n")
    return path


def test_rle_decode_union_non_square(tmp_path, rle_csv):
    out = tmp_path / "masks" / "two.png"
    result = runner.invoke(app, ["data", "rle", "decode", "--csv", str(rle_csv), "--image-id",
                                 "two", "--out", str(out), "--width", "3", "--height", "6"])
    assert result.exit_code == 0, result.output
    mask = _png(out)
    assert mask.shape == (6, 3) and set(np.unique(mask).tolist()) == {0, 255}
    expected = rle_decode("1 2 5 1", 3, 6) | rle_decode("12 3", 3, 6)
    np.testing.assert_array_equal(mask == 255, expected)
    # column-major: pixels 1, 2 (column 0), 8 (column 1) and 12-14 (column 2)
    assert sorted(x * 6 + y for y, x in zip(*np.nonzero(mask))) == [1, 2, 8, 12, 13, 14]


def test_rle_decode_real_gzip_csv_and_encode_back(tmp_path, xrv_data):
    csv = xrv_data / "siim-pneumothorax-train-rle.csv.gz"
    out = tmp_path / "pos.png"
    result = runner.invoke(app, ["data", "rle", "decode", "--csv", str(csv), "--image-id",
                                 POSITIVE_ID, "--out", str(out)])
    assert result.exit_code == 0, result.output
    mask = _png(out)
    assert mask.shape == (1024, 1024)
    with gzip.open(csv, "rt") as handle:
        line = next(row for row in handle if row.startswith(POSITIVE_ID))
    rle = line.split(",", 1)[1].strip()
    np.testing.assert_array_equal(mask == 255, rle_decode(rle))
    encoded = runner.invoke(app, ["data", "rle", "encode", str(out)])
    assert encoded.exit_code == 0, encoded.output
    assert encoded.stdout.strip() == rle


def test_rle_decode_unknown_id(tmp_path, rle_csv):
    result = runner.invoke(app, ["data", "rle", "decode", "--csv", str(rle_csv), "--image-id",
                                 "missing", "--out", str(tmp_path / "m.png")])
    assert result.exit_code == 2
    assert "image id 'missing' not found" in result.output
    assert not (tmp_path / "m.png").exists()


def test_rle_decode_run_past_image(tmp_path, rle_csv):
    result = runner.invoke(app, ["data", "rle", "decode", "--csv", str(rle_csv), "--image-id",
                                 "two", "--out", str(tmp_path / "m.png"), "--width", "2",
                                 "--height", "2"])
    assert result.exit_code == 2
    assert "past the 2 x 2 image" in result.output


def test_rle_encode_empty_and_single_pixel(tmp_path):
    mask = np.zeros((10, 8), dtype=np.uint8)
    Image.fromarray(mask).save(tmp_path / "empty.png")
    mask[4, 3] = 255
    Image.fromarray(mask).save(tmp_path / "one.png")
    empty = runner.invoke(app, ["data", "rle", "encode", str(tmp_path / "empty.png")])
    one = runner.invoke(app, ["data", "rle", "encode", str(tmp_path / "one.png")])
    assert empty.exit_code == one.exit_code == 0
    assert empty.stdout.strip() == "-1"
    assert one.stdout.strip() == f"{3 * 10 + 4} 1"


def test_rle_encode_missing_file(tmp_path):
    result = runner.invoke(app, ["data", "rle", "encode", str(tmp_path / "none.png")])
    assert result.exit_code == 2 and "file not found" in result.output


def _lung_spine(img: np.ndarray) -> tuple[float, float]:
    """Mean of the lung fields and of the spine strip (regions as in tests/io/test_io_image.py)."""
    size = img.shape[0]

    def region(y0, y1, x0, x1):
        return float(img[int(y0 * size):int(y1 * size), int(x0 * size):int(x1 * size)].mean())

    lungs = (region(0.20, 0.50, 0.20, 0.35) + region(0.20, 0.50, 0.62, 0.78)) / 2
    return lungs, region(0.20, 0.70, 0.46, 0.54)


def test_show_monochrome1_uncompressed_and_jpeg2000(tmp_path, rg1_dir):
    outputs = {}
    for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm"):
        out = tmp_path / f"{name}.png"
        result = runner.invoke(app, ["data", "show", str(rg1_dir / name), "--size", "96",
                                     "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert "MONOCHROME1" in result.stdout
        outputs[name] = _png(out)
        assert outputs[name].shape == (96, 96)
        lungs, spine = _lung_spine(outputs[name].astype(np.float64))
        assert lungs + 60 < spine  # air dark, bone bright
    np.testing.assert_array_equal(outputs["RG1_UNCR.dcm"], outputs["RG1_J2KR.dcm"])

    clahe_out = tmp_path / "clahe.png"
    result = runner.invoke(app, ["data", "show", str(rg1_dir / "RG1_UNCR.dcm"), "--size", "96",
                                 "--out", str(clahe_out), "--clahe"])
    assert result.exit_code == 0, result.output
    assert not np.array_equal(_png(clahe_out), outputs["RG1_UNCR.dcm"])


def test_show_png_pads_to_square(tmp_path):
    image = np.full((40, 80), 200, dtype=np.uint8)
    image[:, :40] = 50
    Image.fromarray(image).save(tmp_path / "wide.png")
    out = tmp_path / "out.png"
    result = runner.invoke(app, ["data", "show", str(tmp_path / "wide.png"), "--size", "40",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    shown = _png(out)
    assert shown.shape == (40, 40)
    # zero padding above and below (Lanczos rings for a pixel or two at the edge)
    assert not shown[:8].any() and not shown[32:].any()
    assert shown[12:28, 24:].min() > 200  # the bright half fills the centred band
    assert shown[20, 5] == 0 and shown[20, 35] == 255  # min-max scaled halves


def test_show_bad_input(tmp_path):
    (tmp_path / "empty.dcm").write_bytes(b"")
    result = runner.invoke(app, ["data", "show", str(tmp_path / "empty.dcm"), "--out",
                                 str(tmp_path / "o.png")])
    assert result.exit_code == 2 and "file is empty" in result.output
    result = runner.invoke(app, ["data", "show", str(tmp_path / "empty.dcm"), "--size", "2",
                                 "--out", str(tmp_path / "o.png")])
    assert result.exit_code == 2 and "size must be an integer >= 8" in result.output
