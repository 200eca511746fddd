"""Helpers shared by the adapters, and the base-class behaviour every adapter inherits."""

from __future__ import annotations

import builtins
import gzip

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest

from cxrlab.data.datasets.base import (XrayDataset, boxes_mask, image_shape, is_frontal_view,
                                       read_csv_table, regex_groups)
from cxrlab.errors import ConfigError, CSVFormatError, ImageReadError, MissingFileError, SkipLog


class Tiny(XrayDataset):
    name = "tiny"

    def __init__(self) -> None:
        table = pd.DataFrame({"path": [f"/x/{i}.png" for i in range(4)],
                              "patient_id": ["a", "a", "b", "c"],
                              "study_id": ["s1", "s1", "s2", "s3"],
                              "view": ["PA", "LATERAL", "ap", ""],
                              "frontal": [True, False, True, False]})
        raw = np.array([[1, -1], [0, -1], [-1, np.nan], [0, 0]], dtype=np.float32)
        self._setup(table, raw, ["A", "B"], ["B=multiclass"], SkipLog(), "tiny.csv")


def test_policy_subset_filter_and_counts():
    data = Tiny()
    np.testing.assert_array_equal(data.labels, [[1, -1], [0, -1], [np.nan, np.nan], [0, 0]])
    picked = data.subset(np.array([False, True, True, False]))
    assert picked.table["path"].tolist() == ["/x/1.png", "/x/2.png"]
    np.testing.assert_array_equal(picked.raw_labels, data.raw_labels[1:3])
    assert len(data) == 4  # the original is untouched
    assert data.filter_views(views=["AP"]).table["path"].tolist() == ["/x/2.png"]
    assert len(data.filter_views(frontal=False)) == 2
    assert data.label_counts("study") == {"A": {"n": 2, "positive": 1, "negative": 1},
                                          "B": {"n": 2, "positive": 0, "negative": 1,
                                                "uncertain": 1}}
    ones = data.with_policy(["*=ones"])
    assert ones.labels[2, 0] == 1 and np.isnan(data.labels[2, 0])
    with pytest.raises(ConfigError, match="level"):
        data.label_counts("patient")
    with pytest.raises(ConfigError, match="boolean subset"):
        data.subset([True, False])
    with pytest.raises(ConfigError, match="unknown class 'C'"):
        data.mask(0, "C")
    with pytest.raises(IndexError):
        data.image(4)
    assert data.mask(0) is None and not data.has_masks()


def test_is_frontal_view():
    assert [is_frontal_view(v) for v in ["PA", "ap", "AP AXIAL", "PA LLD", "LATERAL", "LL", ""]] \
        == [True, True, True, True, False, False, False]


def test_read_csv_table_detects_gzip_by_content(tmp_path):
    path = tmp_path / "labels.csv"  # gzip data without a .gz suffix
    path.write_bytes(gzip.compress(b" a , b\n1,\n"))
    table = read_csv_table(path, ["a", "b"])
    assert table.to_dict("records") == [{"a": "1", "b": ""}]
    with pytest.raises(CSVFormatError, match="'c'"):
        read_csv_table(path, ["c"])
    with pytest.raises(MissingFileError):
        read_csv_table(tmp_path / "none.csv")
    broken = tmp_path / "broken.csv.gz"
    broken.write_bytes(gzip.compress(b"a,b\n1,2\n")[:12])
    with pytest.raises(CSVFormatError, match="cannot be parsed"):
        read_csv_table(broken)


def test_regex_groups_with_and_without_pyarrow(monkeypatch):
    values = ["x/patient1/study2/v.jpg", "nothing"]
    pattern = r"(?P<p>patient\d+)/(?P<s>study\d+)/"
    fast = regex_groups(values, pattern)
    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    slow = regex_groups(values, pattern)
    for result in (fast, slow):
        assert result["p"].tolist() == ["patient1", None]
        assert result["s"].tolist() == ["study2", None]


def test_boxes_mask_clips_and_unions():
    mask = boxes_mask((5, 6), np.array([-2.0, 4.5]), np.array([1.2, 3.0]),
                      np.array([1.0, 9.0]), np.array([2.5, 4.0]))
    expected = np.zeros((5, 6), bool)
    expected[1:3, 0:1] = True
    expected[3:4, 4:6] = True
    np.testing.assert_array_equal(mask, expected)


def test_image_shape_from_headers(tmp_path, rg1_dir):
    real = rg1_dir / "RG1_UNCR.dcm"
    header = pydicom.dcmread(real, stop_before_pixels=True)
    assert image_shape(real) == (int(header.Rows), int(header.Columns))
    png = tmp_path / "a.png"
    cv2.imwrite(str(png), np.zeros((7, 3), np.uint8))
    assert image_shape(png) == (7, 3)
    junk = tmp_path / "b.png"
    junk.write_bytes(b"not an image")
    with pytest.raises(ImageReadError):
        image_shape(junk)
    with pytest.raises(MissingFileError):
        image_shape(tmp_path / "none.png")


def test_grouped_digests_follow_each_images_entries_in_any_order():
    import pandas as pd

    from cxrlab.data.datasets.base import grouped_digests

    boxes = pd.DataFrame({"image": ["a", "b", "a"], "label": ["x", "y", "z"], "x": [1.0, 2.0, 3.0]})
    base = grouped_digests(["a", "b", "c"], boxes, "image")
    assert base[2] == "" and base[0] != base[1] and len(base[0]) == 16
    assert grouped_digests(["a", "b", "c"], boxes.iloc[::-1], "image") == base  # row order
    moved = boxes.copy()
    moved.loc[2, "x"] = 4.0  # one of a's boxes moved: only a changes
    after = grouped_digests(["a", "b", "c"], moved, "image")
    assert after[0] != base[0] and after[1:] == base[1:]
    assert grouped_digests(["a"], boxes.iloc[:0], "image") == [""]
