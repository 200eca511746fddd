"""Localization scores: the real NIH box file, the three scores, CIs, and the end-to-end driver."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cxrlab.config import CHEXPERT_COMPETITION_TASKS
from cxrlab.data.datasets.base import boxes_mask
from cxrlab.data.transforms import PreprocessConfig, preprocess
from cxrlab.errors import ConfigError, CSVFormatError
from cxrlab.explain.localize import (boxes_in_model_frame, bootstrap_mean_ci, energy_in_box, localize,
                                     map_to_model, pointing_game, read_boxes, score_map, summarize,
                                     thresholded_iou, wilson_ci)


def test_real_nih_box_file_parses_and_maps_to_chexpert_names(xrv_data):
    boxes = read_boxes(xrv_data / "BBox_List_2017.csv.gz")
    assert len(boxes) == 984 and boxes["image"].nunique() == 880
    assert (boxes["frame"] == "nih1024").all() and (boxes[["w", "h"]] > 0).all().all()
    assert boxes["label"].value_counts().to_dict() == {
        "Atelectasis": 180, "Effusion": 153, "Cardiomegaly": 146, "Infiltration": 123, "Pneumonia": 120,
        "Pneumothorax": 98, "Mass": 85, "Nodule": 79}
    first = boxes.iloc[0]
    assert (first["image"], first["label"]) == ("00013118_008.png", "Atelectasis")
    assert first["x"] == pytest.approx(225.084745762712) and first["h"] == pytest.approx(79.1864406779661)
    # Seed 001's models predict the five CheXpert competition tasks: three of them have boxes.
    mapped = map_to_model(boxes, CHEXPERT_COMPETITION_TASKS)
    assert mapped.groupby(["label", "target"]).size().to_dict() == {
        ("Atelectasis", "Atelectasis"): 180, ("Cardiomegaly", "Cardiomegaly"): 146,
        ("Effusion", "Pleural Effusion"): 153}
    only = map_to_model(boxes, CHEXPERT_COMPETITION_TASKS, classes=["Effusion"])
    assert len(only) == 153 and set(only["target"]) == {"Pleural Effusion"}
    # A model trained on NIH names keeps them.
    assert set(map_to_model(boxes, ["Effusion", "Mass"])["target"]) == {"Effusion", "Mass"}


def test_plain_box_csv_and_bad_files(tmp_path):
    good = tmp_path / "boxes.csv"
    pd.DataFrame({"image": ["a.png"], "label": ["Cardiomegaly"], "x": [1], "y": [2], "w": [3], "h": [4]}).to_csv(
        good, index=False)
    boxes = read_boxes(good)
    assert boxes.iloc[0][["x", "y", "w", "h"]].tolist() == [1, 2, 3, 4] and boxes.iloc[0]["frame"] == "pixels"
    bad = tmp_path / "bad.csv"
    bad.write_text("image,label,x,y,w,h\na.png,Cardiomegaly,1,2,-3,4\n")
    with pytest.raises(CSVFormatError, match="bad.csv:2"):
        read_boxes(bad)
    other = tmp_path / "other.csv"
    other.write_text("path,finding\na.png,x\n")
    with pytest.raises(CSVFormatError, match="expected NIH"):
        read_boxes(other)


def test_scores_on_hand_made_maps():
    mask = np.zeros((10, 10), bool)
    mask[2:5, 2:6] = True                          # 12 pixels
    cam = np.zeros((10, 10), np.float32)
    cam[3, 3] = 1.0                                # peak inside
    cam[8, 8] = 0.5
    assert pointing_game(cam, mask)
    cam_out = cam.copy()
    cam_out[8, 8] = 2.0
    assert not pointing_game(cam_out, mask)
    assert not pointing_game(cam_out, mask, tolerance=4) and pointing_game(cam_out, mask, tolerance=5)  # 5 px away
    assert energy_in_box(cam, mask) == pytest.approx(1.0 / 1.5)
    region = np.zeros((10, 10), np.float32)
    region[2:5, 4:8] = 1.0                         # overlaps 6 of the 12 box pixels; union 18
    assert thresholded_iou(region, mask, 0.5) == pytest.approx(6 / 18)
    assert thresholded_iou(region * 0.4, mask, 0.5) == 0.0
    empty = np.zeros((10, 10), np.float32)          # Grad-CAM's ReLU removed everything
    assert not pointing_game(empty, np.ones((10, 10), bool)) and np.isnan(energy_in_box(empty, mask))
    scores = score_map(region, mask)
    assert scores["box_fraction"] == pytest.approx(0.12) and scores["energy_in_box"] == pytest.approx(0.5)


def test_confidence_intervals():
    low, high = wilson_ci(8, 10)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)   # textbook Wilson 95% interval
    assert wilson_ci(0, 24) == pytest.approx((0.0, 0.1380), abs=1e-4) and wilson_ci(0, 24)[0] == 0.0
    assert wilson_ci(5, 5)[1] == 1.0 and np.isnan(wilson_ci(0, 0)[0])
    values = np.random.default_rng(0).normal(0.4, 0.1, size=200)
    low, high = bootstrap_mean_ci(values, n_boot=500, rng=np.random.default_rng(1))
    assert low < values.mean() < high and high - low == pytest.approx(2 * 1.96 * 0.1 / np.sqrt(200), rel=0.25)
    per_image = pd.DataFrame({"target": ["A"] * 4 + ["B"] * 2, "label": ["A"] * 4 + ["B"] * 2,
                              "pointing_hit": [True, True, False, True, False, False],
                              "iou": [0.5, 0.3, 0.1, 0.4, 0.0, 0.2],
                              "energy_in_box": [0.6, 0.5, 0.2, 0.7, np.nan, 0.3],
                              "box_fraction": [0.1] * 6, "probability": [0.9] * 6})
    summary = summarize(per_image, n_boot=200).set_index("class")
    assert summary.loc["A", "n"] == 4 and summary.loc["A", "pointing_hit_rate"] == 0.75
    assert summary.loc["A", "iou_mean"] == pytest.approx(0.325)
    assert summary.loc["B", "energy_in_box_mean"] == pytest.approx(0.3)
    assert summary["n_empty_maps"].tolist() == [0, 1]
    assert summary.loc["A", "pointing_ci_low"] < 0.75 < summary.loc["A", "pointing_ci_high"]


def test_boxes_follow_padding_and_resizing():
    boxes = pd.DataFrame({"image": ["a"], "label": ["Cardiomegaly"], "x": [40.0], "y": [10.0], "w": [20.0],
                          "h": [30.0], "frame": ["pixels"]})
    # 100 rows x 200 columns: padded with 50 rows on top, then 200 -> 50 px (scale 1/4).
    [(x0, y0, x1, y1)] = boxes_in_model_frame(boxes, (100, 200), 50)
    assert (x0, y0, x1, y1) == pytest.approx((10.0, 15.0, 15.0, 22.5))
    image = np.random.default_rng(0).random((100, 200)).astype(np.float32)
    _, mask = preprocess(image, PreprocessConfig(size=50), mask=boxes_mask((100, 200), [40], [10], [60], [40]))
    rows, cols = np.nonzero(mask)
    assert (rows.min(), cols.min(), rows.max(), cols.max()) == (15, 10, 22, 14)
    nih = boxes.assign(frame="nih1024", x=512.0, y=0.0, w=512.0, h=512.0)
    assert boxes_in_model_frame(nih, (256, 256), 128) == [pytest.approx((64.0, 0.0, 128.0, 64.0))]


def test_localize_end_to_end_on_nih_layout_phantoms(tmp_path):
    from cxrlab.data.synthetic_layouts import write_dataset
    from cxrlab.models import create_classifier
    from cxrlab.models.weights import save_model_checkpoint

    data = write_dataset("nih", tmp_path / "nih", n=10, size=64, seed=0, prevalence=0.5, bbox_fraction=1.0)
    torch.manual_seed(0)
    model = create_classifier("resnet10t", num_classes=3, in_chans=1, pretrained=None)
    meta = {"labels": ["Atelectasis", "Cardiomegaly", "Pleural Effusion"], "input_size": 64,
            "preprocessing": PreprocessConfig(size=64).to_dict(), "normalization": "unit"}
    checkpoint = save_model_checkpoint(tmp_path / "model.pt", model, meta)
    boxes = map_to_model(read_boxes(data / "BBox_List_2017.csv"), meta["labels"])
    pairs = boxes.groupby(["image", "target"]).ngroups
    assert pairs > 0
    missing = sorted(boxes["image"].unique())[0]
    (data / "images" / missing).unlink()
    result = localize(checkpoint, data / "BBox_List_2017.csv", data / "images", tmp_path / "out", n_boot=100)
    assert result.skipped.count == 1 and missing in str(result.skipped.skipped[0])
    expected = pairs - boxes[boxes["image"] == missing]["target"].nunique()
    assert len(result.per_image) == expected
    assert set(result.per_image["target"]) <= set(meta["labels"])
    assert result.per_image["energy_in_box"].between(0, 1).all() and result.per_image["iou"].between(0, 1).all()
    assert (result.per_image["feature_h"] == 2).all()
    assert result.summary["n"].sum() == expected
    assert {"pointing_ci_low", "iou_ci_high", "energy_in_box_ci_low"} <= set(result.summary.columns)
    for name in ("localization_per_image.csv", "localization_summary.csv"):
        assert (tmp_path / "out" / name).is_file()
    assert len(list((tmp_path / "out" / "overlays").glob("*.png"))) == expected
    with pytest.raises(ConfigError, match="no box of a class"):
        localize(checkpoint, data / "BBox_List_2017.csv", data / "images", classes=["Nodule"])
