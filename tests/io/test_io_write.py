"""write_png: lossless uint8/uint16, bool masks, atomic replacement, bad arrays."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from cxrlab.io import read_mask, write_png


def test_uint8_and_uint16_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    img8 = rng.integers(0, 256, (17, 23), dtype=np.uint8)
    img16 = rng.integers(0, 65536, (17, 23), dtype=np.uint16)
    write_png(tmp_path / "a.png", img8)
    write_png(tmp_path / "sub" / "dir" / "b.png", img16)
    with Image.open(tmp_path / "a.png") as a, Image.open(tmp_path / "sub/dir/b.png") as b:
        assert a.mode == "L" and b.mode.startswith("I;16")
        np.testing.assert_array_equal(np.asarray(a), img8)
        np.testing.assert_array_equal(np.asarray(b), img16)


def test_bool_mask_written_as_0_255(tmp_path):
    mask = np.zeros((5, 6), dtype=bool)
    mask[1:3, 2:5] = True
    write_png(tmp_path / "m.png", mask)
    with Image.open(tmp_path / "m.png") as image:
        values = np.asarray(image)
    assert set(np.unique(values).tolist()) == {0, 255}
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), mask)


def test_overwrites_atomically_and_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "x.png"
    write_png(target, np.zeros((4, 4), dtype=np.uint8))
    write_png(target, np.full((4, 4), 9, dtype=np.uint8))
    with Image.open(target) as image:
        assert np.asarray(image).max() == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


def test_failed_replace_keeps_old_file_and_removes_temporary(tmp_path, monkeypatch):
    target = tmp_path / "keep.png"
    write_png(target, np.full((3, 3), 7, dtype=np.uint8))
    before = target.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_png(target, np.zeros((3, 3), dtype=np.uint8))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]


def test_bad_arrays(tmp_path):
    with pytest.raises(TypeError, match="float32"):
        write_png(tmp_path / "f.png", np.zeros((3, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(3, 3, 3\)"):
        write_png(tmp_path / "c.png", np.zeros((3, 3, 3), dtype=np.uint8))
    assert not any(tmp_path.iterdir())
