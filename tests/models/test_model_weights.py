"""Pretrained weights (offline error, local files) and checkpoints with metadata."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision

from cxrlab.errors import ConfigError, InputError, MissingFileError, WeightsUnavailableError
from cxrlab.models import create_classifier
from cxrlab.models.weights import check_input_range, load_model_checkpoint, save_model_checkpoint


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Force the Hugging Face hub offline with an empty cache, so nothing is downloaded."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def test_imagenet_offline_raises_with_both_remedies(offline: None) -> None:
    with pytest.raises(WeightsUnavailableError) as info:
        create_classifier("resnet18", num_classes=1, pretrained="imagenet")
    message = str(info.value)
    assert "HF_HUB_OFFLINE" in message and "pretrained=PATH" in message
    assert "resnet18" in message


def test_imagenet_offline_names_the_registry_weights(offline: None) -> None:
    with pytest.raises(WeightsUnavailableError, match=re.escape("densenet121.tv_in1k")):
        create_classifier("densenet121", num_classes=1, pretrained="imagenet")


def _imagenet_file(tmp_path: Path, name: str = "resnet18", wrap: bool = False) -> tuple[Path, dict]:
    torch.manual_seed(3)
    state = timm.create_model(name, pretrained=False, num_classes=1000).state_dict()
    path = tmp_path / f"{name}.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}} if wrap else state, path)
    return path, state


@pytest.mark.parametrize("wrap", [False, True])
def test_local_timm_weights_fill_the_body(tmp_path: Path, wrap: bool) -> None:
    path, state = _imagenet_file(tmp_path, wrap=wrap)
    model = create_classifier("resnet18", num_classes=2, pretrained=path)
    body = model.body.state_dict()
    assert set(body) == {k for k in state if not k.startswith("fc.")}
    assert all(torch.equal(body[k], state[k]) for k in body)


def test_local_weights_adapt_to_one_channel(tmp_path: Path) -> None:
    path, state = _imagenet_file(tmp_path)
    model = create_classifier("resnet18", num_classes=1, in_chans=1, pretrained=str(path))
    conv1 = model.body.conv1.weight
    assert conv1.shape == (64, 1, 7, 7)
    torch.testing.assert_close(conv1, state["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(model.body.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_torchvision_resnet_file_loads(tmp_path: Path) -> None:
    torch.manual_seed(4)
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, tmp_path / "tv.pth")
    model = create_classifier("resnet18", num_classes=1, pretrained=tmp_path / "tv.pth")
    assert torch.equal(model.body.layer3[0].downsample[1].running_var, state["layer3.0.downsample.1.running_var"])


def test_torchvision_densenet_download_layout_is_remapped(tmp_path: Path) -> None:
    # torchvision's densenet121 download stores "denselayer1.norm.1.weight" (remapped on load).
    state = torchvision.models.densenet121(weights=None).state_dict()
    # The 2017 file also predates BatchNorm's num_batches_tracked buffer.
    old = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v
           for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    torch.save(old, tmp_path / "densenet121-a639ec97.pth")
    model = create_classifier("densenet121", num_classes=1, pretrained=tmp_path / "densenet121-a639ec97.pth")
    key = "features.denseblock4.denselayer16.conv2.weight"
    assert torch.equal(model.body.state_dict()[key], state[key])


def test_wrong_architecture_and_missing_file(tmp_path: Path) -> None:
    path, _ = _imagenet_file(tmp_path)
    with pytest.raises(InputError, match="missing: .*layer1.2"):
        create_classifier("resnet34", num_classes=1, pretrained=path)
    with pytest.raises(MissingFileError, match="not found"):
        create_classifier("resnet18", num_classes=1, pretrained=tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read weights"):
        create_classifier("resnet18", num_classes=1, pretrained=tmp_path / "junk.pth")


META = {
    "labels": ["Atelectasis", "Edema", "Effusion"],
    "input_size": 64,
    "preprocessing": {"size": 64, "clip_percentiles": [0.5, 99.5], "clahe": False},
    "normalization": "imagenet",
    "thresholds": {"Atelectasis": 0.31, "Edema": 0.5, "Effusion": 0.62},
    "run_name": "unit",
    "val_metrics": {"auroc": np.float32(0.75), "auroc_ci": np.array([0.7, 0.8]), "bad": float("nan")},
}


def _trained_model() -> torch.nn.Module:
    torch.manual_seed(5)
    model = create_classifier("resnet18", num_classes=3, in_chans=1, dropout=0.4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    model(torch.randn(4, 1, 64, 64)).sum().backward()
    optimizer.step()
    return model.eval()


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = _trained_model()
    path = save_model_checkpoint(tmp_path / "ckpt" / "best.pt", model, META)
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.pt"]  # no temp files left
    loaded, meta = load_model_checkpoint(path)
    assert not loaded.training
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert meta["arch"] == "resnet18" and meta["num_classes"] == 3 and meta["in_chans"] == 1
    assert meta["head"] == "concat" and meta["dropout"] == pytest.approx(0.4)
    assert meta["labels"] == META["labels"] and meta["thresholds"] == META["thresholds"]
    assert meta["preprocessing"] == META["preprocessing"] and meta["normalization"] == "imagenet"
    assert meta["val_metrics"]["auroc"] == pytest.approx(0.75)
    assert meta["val_metrics"]["auroc_ci"] == pytest.approx([0.7, 0.8])
    assert math.isnan(meta["val_metrics"]["bad"])
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "cxrlab-classifier" and json.loads(raw["meta_json"])["run_name"] == "unit"


def test_checkpoint_body_serves_as_pretrained_file(tmp_path: Path) -> None:
    model = _trained_model()
    path = save_model_checkpoint(tmp_path / "best.pt", model, META)
    fresh = create_classifier("resnet18", num_classes=7, in_chans=1, pretrained=path)
    assert torch.equal(fresh.body.layer2[0].conv1.weight, model.body.layer2[0].conv1.weight)


def test_metadata_must_fit_the_model(tmp_path: Path) -> None:
    model = create_classifier("resnet18", num_classes=3, in_chans=1)
    with pytest.raises(ConfigError, match="num_classes"):
        save_model_checkpoint(tmp_path / "a.pt", model, {**META, "num_classes": 2})
    with pytest.raises(ConfigError, match="2 labels"):
        save_model_checkpoint(tmp_path / "a.pt", model, {**META, "labels": ["A", "B"], "thresholds": {}})
    with pytest.raises(ConfigError, match="unknown labels"):
        save_model_checkpoint(tmp_path / "a.pt", model, {**META, "thresholds": {"Nodule": 0.5}})
    with pytest.raises(ConfigError, match="normalization"):
        save_model_checkpoint(tmp_path / "a.pt", model, {**META, "normalization": "zscore"})
    assert not (tmp_path / "a.pt").exists()


def test_loading_other_files_fails_clearly(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not a cxrlab-classifier checkpoint"):
        load_model_checkpoint(tmp_path / "other.pt")
    with pytest.raises(MissingFileError):
        load_model_checkpoint(tmp_path / "missing.pt")


def _expect_warning(x: torch.Tensor, normalization: str, text: str) -> None:
    with pytest.warns(UserWarning, match=text):
        assert check_input_range(x, normalization) is not None


def _expect_quiet(x: torch.Tensor, normalization: str) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_input_range(x, normalization) is None


def test_check_input_range() -> None:
    torch.manual_seed(6)
    unit = torch.rand(2, 1, 32, 32)
    imagenet = (unit - 0.449) / 0.226
    xrv = unit * 2048 - 1024
    _expect_quiet(unit, "unit")
    _expect_quiet(imagenet, "imagenet")
    _expect_quiet(xrv, "xrv")
    _expect_warning(unit * 255, "unit", "0..255")
    _expect_warning(imagenet, "unit", "expected range")
    _expect_warning(unit, "imagenet", "ImageNet mean/std not applied")
    _expect_warning(xrv, "imagenet", "expected range")
    _expect_warning(unit, "xrv", "less than 255")
    _expect_warning(torch.full((1, 4), float("nan")), "unit", "NaN")
    with pytest.raises(ConfigError):
        check_input_range(unit, "zscore")
