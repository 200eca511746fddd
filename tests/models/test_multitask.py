"""Seed 003 multi-task networks: shapes, gradients, checkpoints, phase-2 freezing."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import DataLoader

from cxrlab.engine.screening import PhaseSchedule, PlateauRule, fit_phase
from cxrlab.errors import ConfigError, InputError
from cxrlab.losses.screening import ScreeningLoss
from cxrlab.models.multitask import (MultiTaskNet, SharedEncoderNet, UNetDecoder,
                                     load_multitask_checkpoint, save_multitask_checkpoint)

SMALL = (16, 12, 8, 8, 8)


@pytest.mark.parametrize("encoder", ["test_resnet", "test_convnext", "densenet121"])
def test_per_disease_net_shapes_and_gradients(encoder):
    torch.manual_seed(0)
    net = MultiTaskNet(encoder, num_classes=3, in_chans=1, decoder_channels=SMALL)
    x = torch.rand(2, 1, 32, 32)
    logits, recon = net(x)
    assert logits.shape == (2, 3) and recon.shape == (2, 1, 32, 32)
    assert torch.isfinite(logits).all() and torch.isfinite(recon).all()
    (logits.sum() + recon.mean()).backward()
    assert all(p.grad is not None for p in net.decoder.parameters())
    assert net.head.weight.grad.abs().sum() > 0
    only_logits, none = net(x, reconstruct=False)
    assert none is None and only_logits.shape == (2, 3)


def test_two_class_head_and_shared_variant():
    net = MultiTaskNet("test_resnet", num_classes=2, decoder_channels=SMALL)
    assert net(torch.rand(1, 1, 48, 48))[0].shape == (1, 2)
    shared = SharedEncoderNet(["a", "b", "c"], "test_resnet", decoder_channels=SMALL)
    logits, recon = shared(torch.rand(2, 1, 48, 48))
    assert logits.shape == (2, 3, 3) and recon.shape == (2, 1, 48, 48)
    per = sum(p.numel() for n, p in net.named_parameters() if not n.startswith("decoder"))
    one_shared = sum(p.numel() for n, p in shared.named_parameters() if not n.startswith("decoder"))
    assert one_shared < 3 * per          # one encoder instead of three


def test_decoder_needs_a_width_per_stage():
    with pytest.raises(ConfigError):
        UNetDecoder([8, 16, 32], decoder_channels=(8,))
    with pytest.raises(ConfigError):
        MultiTaskNet("test_resnet", num_classes=4)
    with pytest.raises(ConfigError):
        SharedEncoderNet(["a", "a"], "test_resnet")


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    shared = SharedEncoderNet(["Effusion", "Nodule"], "test_resnet", decoder_channels=SMALL)
    path = save_multitask_checkpoint(tmp_path / "m.pt", shared.eval(), {"size": 48})
    loaded, meta = load_multitask_checkpoint(path)
    x = torch.rand(2, 1, 48, 48)
    assert meta == {"size": 48} and loaded.diseases == ["Effusion", "Nodule"]
    assert torch.allclose(loaded.eval()(x)[0], shared(x)[0])
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError):
        load_multitask_checkpoint(tmp_path / "bad.pt")


def _loader(n: int = 16, size: int = 32, known: bool = True) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1, size, size, generator=g)
    masks = (torch.rand(n, 1, size, size, generator=g) > 0.7).float()
    items = [{"image": images[i], "unit": images[i], "mask": masks[i], "mask_known": known,
              "target": torch.tensor(i % 3), "index": i} for i in range(n)]
    return DataLoader(items, batch_size=8)


def test_phase2_leaves_the_decoder_unchanged_and_trains_the_head():
    torch.manual_seed(0)
    net = MultiTaskNet("test_resnet", decoder_channels=SMALL)
    decoder = copy.deepcopy(net.decoder.state_dict())     # includes BatchNorm statistics
    head = net.head.weight.detach().clone()
    schedule = PhaseSchedule(max_epochs=2, patience=5, lr=1e-2)
    history = fit_phase(net, _loader(known=False), _loader(), ScreeningLoss(), schedule, "weak",
                        best=float("inf"))
    assert len(history) == 2 and all(row["phase"] == "weak" for row in history)
    for key, value in net.decoder.state_dict().items():
        assert torch.equal(value, decoder[key]), key
    assert not torch.equal(net.head.weight, head)
    assert all(p.requires_grad for p in net.parameters())     # unfrozen afterwards


def test_phase1_trains_the_decoder():
    torch.manual_seed(0)
    net = MultiTaskNet("test_resnet", decoder_channels=SMALL)
    before = net.decoder.out.weight.detach().clone()
    fit_phase(net, _loader(), _loader(), ScreeningLoss(), PhaseSchedule(max_epochs=1), "hard",
              best=float("inf"))
    assert not torch.equal(before, net.decoder.out.weight)


def test_plateau_rule_halves_then_stops():
    rule = PlateauRule(lr=1e-3, patience=2, factor=0.5, min_lr=1e-4, mode="min")
    actions = [rule.step(v) for v in [1.0, 0.9] + [0.95] * 20]
    assert actions[:2] == ["improved", "improved"]
    halvings = actions.count("halve")
    assert halvings == 4                    # 1e-3 -> 5e-4 -> 2.5e-4 -> 1.25e-4 -> 6.25e-5
    assert actions.index("stop") == 2 + 2 * 5 - 1
    assert rule.lr == pytest.approx(6.25e-5)
    rule = PlateauRule(lr=1e-3, patience=1, factor=0.5, min_lr=1e-4, mode="max")
    assert [rule.step(v) for v in (0.5, 0.6, 0.6)] == ["improved", "improved", "halve"]
