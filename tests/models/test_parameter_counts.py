"""Seed 001 Tables 3.2 and 3.3: body, feature and head counts of the nine architectures."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision

from cxrlab.models import (
    EFFICIENTNET_FOR_RESOLUTION,
    SEED001_ARCHITECTURES,
    count_parameters,
    create_classifier,
    efficientnet_for_resolution,
    get_architecture,
)
from cxrlab.errors import ConfigError

# name: (body params, features, head params, sum), copied from seed 001 Table 3.3
# (Table 3.2 lists the same body counts and features).
TABLE_3_3 = {
    "resnet50": (23_508_032, 2048, 2_106_880, 25_614_912),
    "resnet152": (58_143_808, 2048, 2_106_880, 60_250_688),
    "densenet121": (6_953_856, 1024, 1_054_208, 8_008_064),
    "densenet161": (26_472_000, 2208, 2_271_360, 28_743_360),
    "efficientnet_b0": (4_007_548, 1280, 1_317_376, 5_324_924),
    "efficientnet_b1": (6_513_184, 1280, 1_317_376, 7_830_560),
    "efficientnet_b3": (10_696_232, 1536, 1_580_544, 12_276_776),
    "efficientnet_b4": (17_548_616, 1792, 1_843_712, 19_392_328),
    "efficientnet_b5": (28_340_784, 2048, 2_106_880, 30_447_664),
}


def test_registry_holds_the_nine_seed_models() -> None:
    assert set(SEED001_ARCHITECTURES) == set(TABLE_3_3)


@pytest.mark.parametrize("name", list(TABLE_3_3))
def test_table_3_3_counts_with_one_output(name: str) -> None:
    body, features, head, total = TABLE_3_3[name]
    counts = count_parameters(name, num_classes=1)
    assert counts == {"body_params": body, "head_params": head, "num_features": features}
    assert counts["body_params"] + counts["head_params"] == total


@pytest.mark.parametrize("name", ["resnet50", "densenet161", "efficientnet_b4"])
def test_head_grows_by_512_per_extra_class(name: str) -> None:
    one = count_parameters(name, num_classes=1)["head_params"]
    five = count_parameters(name, num_classes=5)["head_params"]
    assert five - one == 4 * 512  # last Linear(512, K) has no bias (fastai LinBnDrop after BN)


def test_linear_head_counts_weights_and_bias() -> None:
    counts = count_parameters("densenet121", num_classes=3, head="linear")
    assert counts["head_params"] == 1024 * 3 + 3


def test_one_channel_input_changes_only_the_first_conv() -> None:
    rgb = count_parameters("resnet50", in_chans=3)["body_params"]
    gray = count_parameters("resnet50", in_chans=1)["body_params"]
    assert rgb - gray == 64 * 2 * 7 * 7  # conv1: 64 filters lose two 7x7 input planes


def test_meta_count_equals_a_real_model() -> None:
    model = create_classifier("densenet121", num_classes=1)
    body = sum(p.numel() for p in model.body_parameters() if p.requires_grad)
    head = sum(p.numel() for p in model.head_parameters() if p.requires_grad)
    assert (body, head) == (6_953_856, 1_054_208)


@pytest.mark.parametrize(("tv_name", "classifier"), [("resnet50", "fc"), ("resnet152", "fc"),
                                                     ("densenet121", "classifier"), ("densenet161", "classifier")])
def test_table_3_2_is_torchvision_without_its_classifier(tv_name: str, classifier: str) -> None:
    with torch.device("meta"):
        model = getattr(torchvision.models, tv_name)(weights=None)
    total = sum(p.numel() for p in model.parameters())
    fc = sum(p.numel() for p in getattr(model, classifier).parameters())
    assert total - fc == TABLE_3_3[tv_name][0]


@pytest.mark.parametrize("variant", ["b0", "b1", "b3", "b4", "b5"])
def test_both_timm_efficientnet_families_match_table_3_2(variant: str) -> None:
    body = TABLE_3_3[f"efficientnet_{variant}"][0]
    assert count_parameters(f"timm:efficientnet_{variant}")["body_params"] == body
    assert count_parameters(f"tf_efficientnet_{variant}")["body_params"] == body


def test_efficientnets_map_to_the_tensorflow_port() -> None:
    # lukemelas/EfficientNet-PyTorch (seed 001's source) is a TF port: BN eps 1e-3, "same" padding.
    spec = get_architecture("efficientnet_b3")
    assert spec is not None and spec.timm_name.startswith("tf_efficientnet_b3")
    with torch.device("meta"):
        model = create_classifier("efficientnet_b3", num_classes=1)
    assert model.body.bn1.eps == pytest.approx(1e-3)
    assert isinstance(model.body.conv_stem, timm.layers.Conv2dSame)


def test_efficientnet_resolution_pairs() -> None:
    assert EFFICIENTNET_FOR_RESOLUTION == {160: "efficientnet_b0", 240: "efficientnet_b1", 320: "efficientnet_b3",
                                           400: "efficientnet_b4", 480: "efficientnet_b5"}
    assert efficientnet_for_resolution(320) == "efficientnet_b3"
    for size, name in EFFICIENTNET_FOR_RESOLUTION.items():
        assert get_architecture(name).experiment_resolutions == (size,)
    with pytest.raises(ConfigError, match="160"):
        efficientnet_for_resolution(224)
