"""The screening loop's per-epoch checkpoints: an interrupted phase resumes at the next epoch,
a finished one is not trained again (one process, a tiny network on random 32 px items)."""

from __future__ import annotations

import logging

import pytest
import torch
from torch.utils.data import DataLoader

from cxrlab.engine.screening import PhaseSchedule, fit_phase
from cxrlab.losses.screening import ScreeningLoss
from cxrlab.models.multitask import MultiTaskNet


class _Killed(Exception):
    pass


def _items(n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.rand(1, 32, 32, generator=g), "unit": torch.rand(1, 32, 32, generator=g),
             "mask": (torch.rand(1, 32, 32, generator=g) > 0.8).float(), "mask_known": True,
             "target": int(i % 3), "index": i} for i in range(n)]


def _net() -> MultiTaskNet:
    torch.manual_seed(0)
    return MultiTaskNet("test_resnet", 3, 1, None, (16, 8, 8, 8), 0.0)


def test_fit_phase_resumes_after_the_last_saved_epoch(tmp_path, caplog):
    train, valid = DataLoader(_items(16, 1), batch_size=8), DataLoader(_items(8, 2), batch_size=8)
    schedule = PhaseSchedule(max_epochs=3, patience=5)
    loss = ScreeningLoss(lam=0.8)
    ckpt = tmp_path / "hard.ckpt"

    def kill_after_epoch_1(row: dict) -> None:
        if row["epoch"] == 1:
            raise _Killed

    with pytest.raises(_Killed):
        fit_phase(_net(), train, valid, loss, schedule, "hard", checkpoint=ckpt, on_epoch=kill_after_epoch_1)
    saved = torch.load(ckpt, weights_only=False)
    assert saved["epoch"] == 1 and not saved["done"] and len(saved["history"]) == 2

    net = _net()
    with caplog.at_level(logging.INFO, logger="cxrlab.engine.screening"):
        history = fit_phase(net, train, valid, loss, schedule, "hard", checkpoint=ckpt, resume=True, name="net")
    assert "resuming net phase hard at epoch 2" in caplog.text
    assert [row["epoch"] for row in history] == [0, 1, 2]
    assert history[:2] == saved["history"]
    final = torch.load(ckpt, weights_only=False)
    assert final["done"]
    for key, value in net.state_dict().items():         # the phase ends on its best weights
        assert torch.equal(value, final["best_state"][key])

    # A finished phase is loaded, not trained again.
    again = _net()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cxrlab.engine.screening"):
        assert fit_phase(again, train, valid, loss, schedule, "hard", checkpoint=ckpt, resume=True,
                         name="net") == history
    assert "net phase hard already finished" in caplog.text
    assert all(torch.equal(v, final["best_state"][k]) for k, v in again.state_dict().items())
