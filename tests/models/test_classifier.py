"""Classifier over every registered body: shapes, gradients, the seed-001 head, freezing."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cxrlab.errors import ConfigError
from cxrlab.models import AdaptiveConcatPool2d, Classifier, create_classifier, list_architectures

SMALL = ["resnet50", "densenet121", "efficientnet_b0", "resnext50_32x4d"]


class ClassifierChecks:
    """Checks shared by every body (like smp's base model test)."""

    in_chans: int

    def build(self, name: str) -> Classifier:
        torch.manual_seed(0)
        return create_classifier(name, num_classes=3, in_chans=self.in_chans)

    def batch(self) -> torch.Tensor:
        return torch.randn(2, self.in_chans, 32, 32)

    def check_forward(self, name: str, gradients: bool) -> None:
        model = self.build(name).train()
        with torch.set_grad_enabled(gradients):
            logits = model(self.batch())
        assert logits.shape == (2, 3)
        assert torch.isfinite(logits).all()
        if not gradients:
            return
        logits.square().sum().backward()
        for param_name, param in model.named_parameters():
            assert param.grad is not None, param_name
            assert torch.isfinite(param.grad).all(), param_name
        # Some inner grads are legitimately 0 at init (timm zero-inits the last BN of each
        # residual block), but the gradient must reach the stem and the output layer.
        stem = next(model.body_parameters())
        assert stem.grad.abs().sum() > 0
        assert model.head[-1].weight.grad.abs().sum() > 0


class TestGrayInput(ClassifierChecks):
    in_chans = 1

    @pytest.mark.parametrize("name", list_architectures())
    def test_forward(self, name: str) -> None:
        self.check_forward(name, gradients=name in SMALL)


class TestRGBInput(ClassifierChecks):
    in_chans = 3

    @pytest.mark.parametrize("name", ["densenet121", "efficientnet_b0"])
    def test_forward_and_gradients(self, name: str) -> None:
        self.check_forward(name, gradients=True)


def test_output_shape_does_not_depend_on_image_size() -> None:
    model = create_classifier("resnet18", num_classes=2, in_chans=1).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 48)).shape == (1, 2)
        assert model(torch.randn(1, 1, 96, 64)).shape == (1, 2)


def test_concat_pool_puts_max_before_average() -> None:
    x = torch.arange(8, dtype=torch.float32).reshape(1, 2, 2, 2)
    pooled = AdaptiveConcatPool2d()(x).flatten()
    assert pooled.tolist() == [3.0, 7.0, 1.5, 5.5]


def test_concat_head_layers_follow_fastai() -> None:
    model = create_classifier("resnet18", num_classes=4, dropout=0.6)
    kinds = [type(m).__name__ for m in model.head]
    assert kinds == ["AdaptiveConcatPool2d", "Flatten", "BatchNorm1d", "Dropout", "Linear", "ReLU",
                     "BatchNorm1d", "Dropout", "Linear"]
    bn1, drop1, lin1, bn2, drop2, lin2 = (model.head[i] for i in (2, 3, 4, 6, 7, 8))
    assert bn1.num_features == 2 * 512 and bn2.num_features == 512
    assert drop1.p == pytest.approx(0.3) and drop2.p == pytest.approx(0.6)
    assert (lin1.in_features, lin1.out_features, lin2.out_features) == (1024, 512, 4)
    assert lin1.bias is None and lin2.bias is None


def test_head_linears_have_kaiming_normal_init() -> None:
    torch.manual_seed(1)
    model = create_classifier("resnet50", num_classes=1)
    weight = model.head[4].weight  # Linear(4096, 512): 2M samples
    assert weight.mean().item() == pytest.approx(0.0, abs=1e-3)
    assert weight.std().item() == pytest.approx(math.sqrt(2.0 / 4096), rel=0.01)
    bn = model.head[2]
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_linear_head() -> None:
    model = create_classifier("resnet18", num_classes=5, head="linear", dropout=0.0)
    kinds = [type(m).__name__ for m in model.head]
    assert kinds == ["AdaptiveAvgPool2d", "Flatten", "Linear"]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert [type(m).__name__ for m in create_classifier("resnet18", 5, head="linear", dropout=0.2).head][2] == "Dropout"


def test_body_and_head_parameters_partition_the_model() -> None:
    model = create_classifier("resnet18", num_classes=2)
    body = {id(p) for p in model.body_parameters()}
    head = {id(p) for p in model.head_parameters()}
    assert body and head and not body & head
    assert body | head == {id(p) for p in model.parameters()}
    assert model.num_features == 512
    assert model.config == {"arch": "resnet18", "num_classes": 2, "in_chans": 3, "head": "concat", "dropout": 0.6}


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _train_step(model: Classifier) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model.train()
    loss = model(torch.randn(4, 1, 32, 32) * 3 + 1).square().mean()
    loss.backward()
    optimizer.step()


def test_freeze_body_keeps_batchnorm_trainable_like_fastai() -> None:
    torch.manual_seed(0)
    model = create_classifier("resnet18", num_classes=2, in_chans=1)
    model.freeze_body(True)
    assert model.body_frozen
    bn_names = {name for name, m in model.body.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert len(bn_names) == 20
    before_body, before_head = _snapshot(model.body), _snapshot(model.head)
    _train_step(model)
    after_body, after_head = model.body.state_dict(), model.head.state_dict()
    for key, value in before_body.items():
        if key.rsplit(".", 1)[0] in bn_names:
            if key.endswith(("weight", "running_mean")):
                assert not torch.equal(value, after_body[key]), key   # BN learns and tracks stats
        else:
            assert torch.equal(value, after_body[key]), key           # convolutions untouched
    assert not torch.equal(before_head["4.weight"], after_head["4.weight"])
    assert model.body.bn1.training


def test_freeze_body_without_bn_keeps_the_whole_body_fixed() -> None:
    torch.manual_seed(0)
    model = create_classifier("resnet18", num_classes=2, in_chans=1)
    model.freeze_body(True, train_bn=False)
    model.train()  # Lightning calls this every epoch; frozen BN must stay in eval mode
    assert not model.body.bn1.training and model.head[2].training
    before = _snapshot(model.body)
    _train_step(model)
    after = model.body.state_dict()
    assert all(torch.equal(value, after[key]) for key, value in before.items())
    model.freeze_body(False)
    assert all(p.requires_grad for p in model.parameters())
    assert model.body.bn1.training


def test_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="unknown architecture 'resnet5'.*resnet50"):
        create_classifier("resnet5", 1)
    with pytest.raises(ConfigError, match="unknown head"):
        create_classifier("resnet18", 1, head="mlp")
    with pytest.raises(ConfigError, match="num_classes"):
        create_classifier("resnet18", 0)
    with pytest.raises(ConfigError, match="dropout"):
        create_classifier("resnet18", 1, dropout=1.0)
    with pytest.raises(ConfigError, match="in_chans"):
        create_classifier("resnet18", 1, in_chans=0)


def test_timm_prefix_bypasses_the_registry() -> None:
    with torch.device("meta"):
        registered = create_classifier("efficientnet_b0", 1)
        plain = create_classifier("timm:efficientnet_b0", 1)
    assert registered.timm_name == "tf_efficientnet_b0.in1k"
    assert plain.timm_name == "efficientnet_b0"
    assert plain.body.bn1.eps == pytest.approx(1e-5)
