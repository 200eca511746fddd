"""Preprocessing transforms, the config, and tensor normalizations."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from cxrlab.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PreprocessConfig,
    apply_clahe,
    equalize,
    minmax_scale,
    pad_to_square,
    percentile_clip,
    preprocess,
    resize_image,
    resize_mask,
    to_tensor,
)
from cxrlab.errors import ConfigError, InputError


def _phantom(height: int = 60, width: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """A dim image with a bright rectangle (the mask) and two outlier pixels."""
    rng = np.random.default_rng(0)
    image = rng.normal(1000.0, 20.0, (height, width)).astype(np.float32)
    mask = np.zeros((height, width), dtype=bool)
    mask[10:30, 20:50] = True
    image[mask] += 2000.0
    image[0, 0], image[-1, -1] = -1e6, 1e6
    return image, mask


def test_percentile_clip_and_minmax():
    x = np.arange(1000, dtype=np.float64)
    clipped = percentile_clip(x, 1.0, 99.0)
    assert clipped.dtype == np.float32
    assert clipped.min() == pytest.approx(np.percentile(x, 1.0))
    assert clipped.max() == pytest.approx(np.percentile(x, 99.0))
    np.testing.assert_array_equal(clipped[100:900], x[100:900])
    scaled = minmax_scale(clipped)
    assert scaled.dtype == np.float32 and scaled.min() == 0.0 and scaled.max() == 1.0
    assert not minmax_scale(np.full((3, 3), 5.0)).any()


def test_pad_to_square_centres_image_and_mask():
    image = np.ones((4, 10), dtype=np.float32)
    mask = np.zeros((4, 10), dtype=bool)
    mask[0, 0] = True
    padded, padded_mask = pad_to_square(image, mask)
    assert padded.shape == padded_mask.shape == (10, 10)
    assert padded[3:7].all() and not padded[:3].any() and not padded[7:].any()
    assert list(zip(*np.nonzero(padded_mask))) == [(3, 0)]
    odd = pad_to_square(np.ones((10, 5), dtype=np.uint8))  # 5 extra columns: 2 left, 3 right
    assert odd.shape == (10, 10) and odd.dtype == np.uint8
    assert odd[:, 2:7].all() and not odd[:, :2].any() and not odd[:, 7:].any()
    square = np.ones((6, 6))
    assert pad_to_square(square) is square
    with pytest.raises(InputError, match="mask shape"):
        pad_to_square(image, mask[:, :5])


def test_resize_image_and_mask():
    image = np.linspace(0, 1, 40 * 40, dtype=np.float32).reshape(40, 40)
    assert resize_image(image, 16).shape == (16, 16)
    assert resize_image(image, (8, 12)).shape == (8, 12)
    mask = np.zeros((40, 40), dtype=bool)
    mask[10:20, 0:40] = True
    small = resize_mask(mask, 20)
    assert small.dtype == np.bool_ and small.shape == (20, 20)
    assert small[5:10].all() and not small[:5].any() and not small[10:].any()


def test_preprocess_shape_range_and_mask_geometry():
    image, mask = _phantom()
    cfg = PreprocessConfig(size=50)
    out, out_mask = preprocess(image, cfg, mask=mask)
    assert out.shape == out_mask.shape == (50, 50)
    assert out.dtype == np.uint8 and out_mask.dtype == np.bool_
    assert out.min() == 0 and out.max() == 255
    # 100 wide -> 50: scale 1/2; 60 tall padded by 20 on top -> rows 10+5..10+15, cols 10..25
    expected = np.zeros((50, 50), dtype=bool)
    expected[15:25, 10:25] = True
    np.testing.assert_array_equal(out_mask, expected)
    bright = out > 128
    assert (bright & out_mask).sum() / (bright | out_mask).sum() > 0.85
    np.testing.assert_array_equal(preprocess(image, cfg), out)


def test_preprocess_percentiles_remove_outliers():
    image, _ = _phantom()
    clipped = preprocess(image, PreprocessConfig(size=32, pad_square=False))
    unclipped = preprocess(image, PreprocessConfig(size=32, pad_square=False,
                                                   clip_percentiles=None))
    # without clipping the +-1e6 outliers squeeze the whole phantom into one gray level
    assert np.ptp(clipped[8:24, 8:24]) > 100
    assert np.ptp(unclipped[8:24, 8:24]) <= 2


def test_preprocess_rejects_bad_input():
    with pytest.raises(InputError, match="non-empty"):
        preprocess(np.zeros((3, 4, 3)), PreprocessConfig())
    with pytest.raises(InputError, match="mask shape"):
        preprocess(np.zeros((30, 40)), PreprocessConfig(size=16), mask=np.zeros((30, 41)))


def test_clahe_and_equalize_change_contrast():
    rng = np.random.default_rng(0)
    low = rng.integers(100, 120, (256, 256)).astype(np.uint8)
    weak = apply_clahe(low, clip_limit=1.0, tile_grid=4)
    strong = apply_clahe(low, clip_limit=4.0, tile_grid=4)
    assert weak.dtype == np.uint8 and weak.shape == low.shape
    assert low.std() < weak.std() < strong.std()
    flat = equalize(low)
    assert flat.std() > 4 * low.std()
    with pytest.raises(TypeError, match="uint8"):
        apply_clahe(low.astype(np.float32))


def test_clahe_in_preprocess_uses_tile_grid():
    image, _ = _phantom()
    base = PreprocessConfig(size=64, clahe=True)
    coarse = preprocess(image, dataclasses.replace(base, clahe_tile_grid=2))
    fine = preprocess(image, dataclasses.replace(base, clahe_tile_grid=8))
    plain = preprocess(image, dataclasses.replace(base, clahe=False))
    assert not np.array_equal(coarse, fine) and not np.array_equal(fine, plain)


@pytest.mark.parametrize("channels", [1, 3])
def test_to_tensor_normalizations(channels):
    img = np.array([[0, 255], [51, 128]], dtype=np.uint8)
    unit = to_tensor(img, channels, "unit")
    assert unit.shape == (channels, 2, 2) and unit.dtype == torch.float32
    assert unit.min() == 0.0 and unit.max() == 1.0
    xrv = to_tensor(img, channels, "xrv")
    assert xrv[0, 0, 0] == -1024.0 and xrv[0, 0, 1] == 1024.0
    imagenet = to_tensor(img, channels, "imagenet")
    if channels == 3:
        for c in range(3):
            assert imagenet[c, 0, 0].item() == pytest.approx(-IMAGENET_MEAN[c] / IMAGENET_STD[c])
    else:
        mean, std = np.mean(IMAGENET_MEAN), np.mean(IMAGENET_STD)
        assert imagenet[0, 0, 1].item() == pytest.approx((1 - mean) / std, rel=1e-5)
    unit[0, 0, 0] = 5.0  # channels are independent copies, the input is untouched
    assert img[0, 0] == 0 and (channels == 1 or unit[1, 0, 0] == 0.0)


def test_to_tensor_rejects_bad_arguments():
    img = np.zeros((4, 4), dtype=np.uint8)
    with pytest.raises(ConfigError, match="channels"):
        to_tensor(img, 2)
    with pytest.raises(ConfigError, match="normalization"):
        to_tensor(img, 1, "zscore")
    with pytest.raises(TypeError, match="uint8"):
        to_tensor(img.astype(np.float32))


def test_config_round_trip_and_validation():
    cfg = PreprocessConfig(size=224, clip_percentiles=[1, 99], clahe=True, clahe_tile_grid=4)
    assert cfg.clip_percentiles == (1.0, 99.0)
    data = cfg.to_dict()
    assert data["clip_percentiles"] == [1.0, 99.0]
    assert PreprocessConfig.from_dict(json.loads(json.dumps(data))) == cfg
    assert PreprocessConfig.from_dict({"clip_percentiles": None}).clip_percentiles is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.size = 10  # type: ignore[misc]
    bad = [{"size": 4}, {"size": 32.0}, {"clip_percentiles": (99, 1)},
           {"clip_percentiles": (0.5,)}, {"clahe_clip_limit": 0}, {"clahe_tile_grid": 0},
           {"clahe": "yes"}, {"clahe": True, "equalize": True}, {"sizes": 32}]
    for values in bad:
        with pytest.raises(ConfigError):
            PreprocessConfig.from_dict(values)
