"""U-Net factory: encoders by name, channels, freezing, local/ImageNet weights, checkpoints."""

from __future__ import annotations

import pytest
import torch
import torchvision

from cxrlab.engine.optim import OptimSpec
from cxrlab.engine.optim import param_groups
from cxrlab.errors import ConfigError, InputError, MissingFileError, WeightsUnavailableError
from cxrlab.models.segmentation import (SegmentationModel, create_unet, foreground_logits, foreground_probability,
                                        load_segmentation_checkpoint, resolve_encoder,
                                        save_segmentation_checkpoint)

SMALL = (32, 16, 16, 8, 8)


@pytest.mark.parametrize("encoder,in_chans,classes", [
    ("resnet18", 1, 2), ("tu-resnet10t", 3, 2), ("resnet10t", 1, 1), ("tu-mobilenetv3_small_050", 3, 1)])
def test_unet_shapes_finiteness_and_gradients(encoder, in_chans, classes):
    torch.manual_seed(0)
    model = create_unet(encoder, in_chans=in_chans, classes=classes, decoder_channels=SMALL)
    x = torch.randn(2, in_chans, 64, 64)
    out = model(x)
    assert out.shape == (2, classes, 64, 64)
    assert torch.isfinite(out).all()
    out.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    # every parameter is in exactly one of body (encoder) and head (decoder + segmentation head)
    body, head = {id(p) for p in model.body_parameters()}, {id(p) for p in model.head_parameters()}
    assert not body & head and body | head == {id(p) for p in model.parameters()}


def test_resnet34_is_the_seed002_default():
    model = create_unet(in_chans=3)
    assert model.encoder_name == "resnet34" and model.classes == 2
    assert model.config["decoder_channels"] == [256, 128, 64, 32, 16]


def test_encoder_names_resolve_to_smp_or_timm():
    assert resolve_encoder("resnet34") == "resnet34"
    assert resolve_encoder("resnext50_32x4d") == "resnext50_32x4d"      # smp's own
    assert resolve_encoder("convnext_atto") == "tu-convnext_atto"       # timm only
    with pytest.raises(ConfigError, match="did you mean"):
        resolve_encoder("resnet34x")


def test_two_channel_output_is_a_softmax_pair():
    logits = torch.randn(3, 2, 5, 5)
    assert torch.allclose(foreground_probability(logits)[:, 0], torch.softmax(logits, dim=1)[:, 1], atol=1e-6)
    assert torch.equal(foreground_logits(logits[:, :1]), logits[:, :1])
    with pytest.raises(InputError):
        foreground_logits(torch.zeros(1, 3, 4, 4))


def test_freezing_the_encoder_keeps_batchnorm_trainable_by_default():
    model = create_unet("resnet18", in_chans=1, decoder_channels=SMALL)
    model.freeze_body(True)
    frozen = [n for n, p in model.body.named_parameters() if not p.requires_grad]
    trainable = [n for n, p in model.body.named_parameters() if p.requires_grad]
    assert frozen and all("bn" in n or "downsample.1" in n for n in trainable)
    assert all(p.requires_grad for p in model.head_parameters())
    spec = OptimSpec(optimizer="adam", lr_body=1e-4, lr_head=1e-3, freeze_body=True)
    groups = param_groups(model, spec)
    body = [p for g in groups if g["name"].startswith("body") for p in g["params"]]
    assert body and all(p.ndim == 1 for p in body)          # only BatchNorm of a frozen encoder
    assert {"head", "head_no_decay"} <= {g["name"] for g in groups}
    model.freeze_body(True, train_bn=False)
    model.train()
    assert not model.body.bn1.training and model.unet.decoder.training
    model.freeze_body(False)
    assert all(p.requires_grad for p in model.parameters())
    assert {g["name"] for g in param_groups(model, OptimSpec("adam", 1e-4, 1e-3, False))} >= {"body", "head"}


def test_local_torchvision_weights_load_into_a_gray_encoder(tmp_path):
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = create_unet("resnet18", in_chans=1, pretrained=path, decoder_channels=SMALL)
    assert torch.allclose(model.body.conv1.weight, reference.conv1.weight.sum(dim=1, keepdim=True))
    assert torch.equal(model.body.layer2[1].conv2.weight, reference.layer2[1].conv2.weight)
    with pytest.raises(InputError, match="do not fit"):
        create_unet("resnet34", in_chans=1, pretrained=path, decoder_channels=SMALL)
    with pytest.raises(MissingFileError):
        create_unet("resnet18", pretrained=tmp_path / "missing.pth")


def test_imagenet_offline_names_both_ways_out(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for encoder in ("resnet18", "tu-resnet10t"):
        with pytest.raises(WeightsUnavailableError) as info:
            create_unet(encoder, pretrained="imagenet", decoder_channels=SMALL)
        assert "connect to the internet" in str(info.value) and "pretrained=PATH" in str(info.value)


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    model = create_unet("tu-resnet10t", in_chans=1, decoder_channels=(16, 8, 8)).eval()
    path = save_segmentation_checkpoint(tmp_path / "unet.pt", model, {"role": "one_case", "input_size": 64})
    loaded, meta = load_segmentation_checkpoint(path)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert meta["role"] == "one_case" and meta["encoder"] == "tu-resnet10t" and meta["encoder_depth"] == 3
    # the checkpoint's encoder also serves as local pretrained weights
    again = create_unet("tu-resnet10t", in_chans=1, pretrained=path, decoder_channels=(16, 8, 8))
    assert all(torch.equal(a, b) for a, b in zip(again.body.state_dict().values(), model.body.state_dict().values()))
    torch.save({"not": "a checkpoint"}, tmp_path / "bad.pt")
    with pytest.raises(InputError, match="cxrlab-segmenter"):
        load_segmentation_checkpoint(tmp_path / "bad.pt")


def test_invalid_arguments_raise_config_errors():
    with pytest.raises(ConfigError, match="1 or 3"):
        create_unet("resnet18", in_chans=2)
    with pytest.raises(ConfigError, match="classes"):
        create_unet("resnet18", classes=3)
    with pytest.raises(ConfigError, match="decoder"):
        create_unet("resnet18", decoder_channels=(8, 8))
    with pytest.raises(ConfigError, match="SegmentationModel"):
        save_segmentation_checkpoint("x.pt", torch.nn.Linear(1, 1), {})  # type: ignore[arg-type]
    assert isinstance(create_unet("resnet18", decoder_channels=SMALL), SegmentationModel)
