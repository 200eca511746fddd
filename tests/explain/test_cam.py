"""Class activation maps: a trained model looks at the lesion; API shapes, upsampling, files."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cxrlab.data.synthetic import generate_phantom
from cxrlab.data.transforms import PreprocessConfig, preprocess, to_tensor
from cxrlab.errors import ConfigError
from cxrlab.explain.cam import CAM_METHODS, class_index, compute_cam, explain_files, heatmap, overlay
from cxrlab.explain.localize import energy_in_box
from cxrlab.models import create_classifier
from cxrlab.models.classifier import Classifier, concat_head
from cxrlab.models.weights import save_model_checkpoint

SIZE = 64
FINDING = "consolidation"      # a focal opacity anywhere in a lung: the model must find it


def _phantoms(rng: np.random.Generator, n: int, positive: bool) -> tuple[list[torch.Tensor], list[np.ndarray]]:
    cfg = PreprocessConfig(size=SIZE)
    images, masks = [], []
    for _ in range(n):
        phantom = generate_phantom(rng, SIZE, [FINDING] if positive else [])
        images.append(to_tensor(preprocess(phantom.image, cfg), channels=1, normalization="unit"))
        masks.append(phantom.masks.get(FINDING))
    return images, masks


def _small_classifier() -> Classifier:
    """A cxrlab Classifier with a stride-8 body, so a 64 px input gives an 8 x 8 map."""

    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    body = nn.Sequential(*block(1, 16, 2), *block(16, 32, 2), *block(32, 64, 2), *block(64, 64, 1))
    return Classifier(body, concat_head(64, 1, 0.1), 64, arch="small", timm_name="small", num_classes=1,
                      in_chans=1, head_type="concat", dropout=0.1)


@pytest.fixture(scope="module")
def trained():
    """A small classifier trained on SYNTHETIC phantoms: consolidation vs normal."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    positives, _ = _phantoms(rng, 80, True)
    negatives, _ = _phantoms(rng, 80, False)
    x = torch.stack(positives + negatives)
    y = torch.tensor([1.0] * 80 + [0.0] * 80)[:, None]
    model = _small_classifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(0)
    for _ in range(6):
        model.train()
        for index in torch.randperm(len(x), generator=generator).split(16):
            loss = F.binary_cross_entropy_with_logits(model(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    test_pos, test_masks = _phantoms(rng, 32, True)
    test_neg, _ = _phantoms(rng, 32, False)
    return model, test_pos, test_masks, test_neg


def test_trained_model_puts_more_map_energy_inside_the_lesion_than_outside(trained):
    from sklearn.metrics import roc_auc_score

    model, positives, masks, negatives = trained
    with torch.no_grad():
        scores = torch.sigmoid(model(torch.stack(positives + negatives)))[:, 0].numpy()
    assert roc_auc_score([1] * 32 + [0] * 32, scores) >= 0.9      # it learned the finding
    inside, outside, shares = [], [], []
    for image, mask in zip(positives, masks):
        cam = heatmap(model, image, 0, "gradcam", with_png=False).map
        inside.append(cam[mask].mean())
        outside.append(cam[~mask].mean())
        shares.append(energy_in_box(cam, mask) / mask.mean())
    inside, outside = np.array(inside), np.array(outside)
    # Energy per pixel is higher inside the lesion mask than outside it on most images...
    assert (inside > outside).mean() >= 0.5
    # ...and on average the mask holds well over its area's share of the map. (Over 9 training
    # seeds on this machine: fraction 0.56-1.0, share 1.96-5.7; untrained 0.74-0.92.) A map with
    # no positive evidence at all is all zero (its share is NaN): allowed on a few images only.
    assert np.isnan(shares).mean() <= 0.1
    assert np.nanmean(shares) > 1.5
    # An untrained model of the same shape shows no such preference.
    torch.manual_seed(1)
    untrained = _small_classifier().eval()
    shares_untrained = []
    for image, mask in zip(positives, masks):
        cam = heatmap(untrained, image, 0, "gradcam", with_png=False).map
        shares_untrained.append(energy_in_box(cam, mask) / mask.mean())
    assert np.nanmean(shares) > 1.5 * np.nanmean(shares_untrained)


def test_heatmap_shapes_bilinear_upsampling_probability_and_png(trained):
    model, positives, _, _ = trained
    image = positives[0]
    result = heatmap(model, image, "finding", labels=["finding"])
    assert result.feature_size == (8, 8) and result.raw.shape == (8, 8)
    assert result.map.shape == (SIZE, SIZE) and result.map.dtype == np.float32
    assert 0.0 <= result.map.min() and result.map.max() <= 1.0 and result.raw.max() == pytest.approx(1.0)
    expected = F.interpolate(torch.from_numpy(result.raw)[None, None], size=(SIZE, SIZE), mode="bilinear",
                             align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(result.map, expected, atol=1e-6)
    assert len(np.unique(result.map)) > 4 * 64                     # smooth, not nearest-neighbour blocks
    with torch.no_grad():
        assert result.probability == pytest.approx(float(torch.sigmoid(model(image[None]))[0, 0]), abs=1e-5)
    decoded = cv2.imdecode(np.frombuffer(result.overlay_png, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (SIZE, SIZE, 3)
    assert result.label == "finding" and result.target == 0 and result.method == "gradcam"


@pytest.mark.parametrize("method", sorted(CAM_METHODS))
def test_every_method_gives_a_normalised_map(method):
    torch.manual_seed(0)
    model = _small_classifier().eval()
    raw, up, probability = compute_cam(model, torch.rand(1, 48, 48), target=0, method=method)
    assert raw.shape == (6, 6) and up.shape == (48, 48)
    assert np.isfinite(up).all() and 0.0 <= up.min() and up.max() <= 1.0 and 0.0 < probability < 1.0


def test_the_last_feature_map_of_a_timm_body_is_explained():
    torch.manual_seed(0)
    model = create_classifier("resnet10t", num_classes=2, in_chans=3, pretrained=None).eval()
    raw, up, _ = compute_cam(model, torch.randn(3, 96, 96), target=1, method="gradcam")
    assert raw.shape == (3, 3) and up.shape == (96, 96)            # stride 32: 96 px -> 3 x 3
    with torch.no_grad():
        assert model.body(torch.zeros(1, 3, 96, 96)).shape[-2:] == raw.shape


def test_targets_methods_and_overlay_checks():
    assert class_index("pleural effusion", ["Cardiomegaly", "Pleural Effusion"]) == 1
    assert class_index("0", ["Cardiomegaly"]) == 0
    with pytest.raises(ConfigError, match="unknown class"):
        class_index("Edema", ["Cardiomegaly"])
    with pytest.raises(ConfigError, match="out of range"):
        class_index(3, ["Cardiomegaly"])
    model = create_classifier("resnet10t", num_classes=1, in_chans=1, pretrained=None)
    with pytest.raises(ConfigError, match="unknown CAM method"):
        compute_cam(model, torch.zeros(1, 64, 64), method="gradcam3000")
    gray = np.full((8, 8), 100, np.uint8)
    cam = np.zeros((8, 8), np.float32)
    cam[:4] = 1.0
    rgb = overlay(gray, cam, alpha=0.5, boxes=[(4, 4, 8, 8)])
    assert rgb.shape == (8, 8, 3)
    assert rgb[0, 0, 0] != rgb[5, 0, 0]                           # map shown where it is high
    assert tuple(rgb[7, 7]) == (0, 255, 0)                        # box outline drawn in green


def test_explain_files_writes_overlays_maps_and_a_manifest(tmp_path):
    from cxrlab.io import write_png

    torch.manual_seed(0)
    model = create_classifier("resnet10t", num_classes=2, in_chans=1, pretrained=None)
    meta = {"labels": ["Cardiomegaly", "Pleural Effusion"], "input_size": 64,
            "preprocessing": PreprocessConfig(size=64).to_dict(), "normalization": "unit"}
    checkpoint = save_model_checkpoint(tmp_path / "model.pt", model, meta)
    rng = np.random.default_rng(0)
    paths = []
    for k in range(2):
        path = tmp_path / f"img{k}.png"
        write_png(path, generate_phantom(rng, 80, ["cardiomegaly"]).image)
        paths.append(path)
    table = explain_files(checkpoint, paths, tmp_path / "out", method="gradcam++", targets=["Pleural Effusion"])
    assert len(table) == 2 and set(table["label"]) == {"Pleural Effusion"}
    assert (table["feature_h"] == 2).all()                        # 64 px / 32
    for row in table.itertuples():
        assert (tmp_path / "out" / row.overlay).is_file()
        assert np.load(tmp_path / "out" / row.map).shape == (64, 64)
        assert np.load(tmp_path / "out" / row.raw).shape == (2, 2)
    manifest = pd.read_csv(tmp_path / "out" / "explanations.csv")
    assert manifest["overlay"].tolist() == ["img0__pleural_effusion__gradcampp.png",
                                            "img1__pleural_effusion__gradcampp.png"]
