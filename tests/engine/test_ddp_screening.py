"""Screening under DDP: two CPU processes (gloo) through the real ``cxrlab screen train``.

The seed-003 loop runs as DistributedDataParallel in a group that ``start_group`` launches
(rank 0 re-runs the command for rank 1). Each epoch's validation loss and AUROC rank 0
recorded come from items gathered from both ranks, so they must equal what one process
computes from that epoch's saved weights on the whole validation set; rank 0 alone writes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from cxrlab.config.screening import load_screening_config
from cxrlab.data.screening import ScreeningItems
from cxrlab.data.synthetic_screening import write_screening_dataset
from cxrlab.engine.screening import validation_metrics
from cxrlab.losses.screening import ScreeningLoss
from cxrlab.models.multitask import SharedEncoderNet
from cxrlab.tasks.screening.data import _loader, prepare_screening_data

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo_screening.yaml"


def _one_process(run_dir: Path, phase: str) -> dict[str, float]:
    """Validation metrics of the shared network's last epoch of ``phase``, in this process."""
    cfg = load_screening_config(run_dir / "config.yaml", ["train.devices=1"])
    data = prepare_screening_data(cfg)
    d, m = cfg.data, cfg.model
    net = SharedEncoderNet(list(d.diseases), m.encoder, m.num_classes, d.channels, None, m.decoder_channels,
                           m.dropout)
    state = torch.load(run_dir / "shared" / "checkpoints" / "shared" / f"{phase}.ckpt", map_location="cpu",
                       weights_only=False)
    net.load_state_dict(state["model"])
    items = ScreeningItems(data.store, data.parts["valid"], data.targets, None, cfg.dilation(), None, d.channels,
                           d.normalization)
    return validation_metrics(net, _loader(items, d.batch_size, False, 0, 0), ScreeningLoss(lam=cfg.train.lam))


def test_screening_under_ddp_matches_one_process(tmp_path, cli_env):
    data = write_screening_dataset(tmp_path / "data", 40, 32, seed=5, seen=["pneumothorax", "effusion"],
                                   unseen=["edema"], valid_fraction=0.3)
    command = [sys.executable, "-m", "cxrlab.cli.main", "screen", "train", str(DEMO), "--quiet",
               f"data.options.csv={data / 'labels.csv'}", "data.eval_sets={}", f"output.root={tmp_path / 'runs'}",
               "name=ddp", "data.size=32", "data.diseases=[Pneumothorax,Effusion]", "data.unseen=[Edema]",
               "risk_groups={critical: [Pneumothorax, Effusion]}", "train.phase1_epochs=1",
               "train.phase2_epochs=1", "train.workers=1", "train.threads=0", "model.variants=[shared]",
               "train.devices=2"]
    done = subprocess.run(command, env=cli_env, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "joining a gloo process group as rank 1 of 2" in done.stderr, done.stderr[-4000:]
    run_dir = tmp_path / "runs" / "ddp"
    assert "run directory" in done.stdout
    history = pd.read_csv(run_dir / "shared" / "history_shared.csv")
    assert list(history["phase"]) == ["hard", "weak"]
    for phase in ("hard", "weak"):
        row = history[history["phase"] == phase].iloc[-1]
        expected = _one_process(run_dir, phase)
        assert row["valid_loss"] == pytest.approx(expected["loss"], abs=1e-6), phase
        assert row["valid_auroc"] == pytest.approx(expected["auroc"], abs=1e-6), phase
    assert (run_dir / "shared" / "shared.pt").is_file() and (run_dir / "report.json").is_file()
