"""The pneumothorax cascade under DDP: two CPU processes (gloo) through the real ``cxrlab seg train``.

Both U-Nets and the gate train on two ranks; rank 0 alone writes. The validation Dice, IoU and
loss of each U-Net and the gate's AUROC and loss that rank 0 recorded (history.csv) come from
items gathered from both ranks, so they must equal what one process computes from each
network's saved weights on the whole validation set. Then ``--resume`` of a run killed after
the One Case U-Net's epoch-end checkpoint (its final weights and the gate missing) skips the
finished baseline, restarts the One Case U-Net after its last epoch and retrains the gate, on both ranks again.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cxrlab.config.pneumothorax import load_pneumothorax_config
from cxrlab.engine.segmentation import SegmentationModule
from cxrlab.losses.segmentation import create_segmentation_loss
from cxrlab.models.segmentation import create_unet
from cxrlab.tasks.classification.train import _phase_spec
from cxrlab.tasks.pneumothorax.data import _loader, open_data


def _recipe(root: Path) -> Path:
    recipe = {
        "name": "cascade", "seed": 0,
        "phantoms": {"n": 40, "size": 32, "seed": 3, "prevalence": 0.5, "out": str(root / "phantoms")},
        "data": {"split": {"train": 0.7, "valid": 0.3, "test": 0.2}, "size": 32, "channels": 1,
                 "normalization": "unit", "batch_size": 8, "num_workers": 0},
        "unet": {"encoder": "tu-test_resnet", "pretrained": None, "decoder_channels": [32, 16, 8],
                 "one_case_epoch": "match"},
        "train": {"phases": [{"epochs": 1, "lr": 0.003}], "accelerator": "cpu", "devices": 1},
        "gate": {"model": {"arch": "test_resnet", "head": "linear", "dropout": 0.0, "pretrained": None},
                 "data": {"size": 32, "augment": False, "batch_size": 8},
                 "train": {"phases": [{"epochs": 1, "lr": 0.003}], "loss": "bce"}},
        "postprocess": {"thresholds": [0.5], "gate_thresholds": [0.5]},
        "output": {"root": str(root / "runs"), "mlflow": False},
    }
    path = root / "cascade.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _unet_validation(run_dir: Path, role: str) -> dict[str, float]:
    """Validation metrics of a U-Net's final weights, computed in this single process."""
    cfg = load_pneumothorax_config(run_dir / "config.yaml", ["train.strategy=auto", "train.devices=1"])
    data = open_data(cfg)
    valid = np.asarray(json.loads((run_dir / role / "train_images.json").read_text())["valid_indices"])
    model = create_unet(cfg.unet.encoder, in_chans=cfg.data.channels, classes=cfg.unet.classes, pretrained=None,
                        decoder_channels=cfg.unet.decoder_channels)
    model.load_state_dict(torch.load(run_dir / role / "checkpoints" / "phase0" / "final_weights.pt",
                                     map_location="cpu", weights_only=True))
    module = SegmentationModule(model, create_segmentation_loss(cfg.train.loss, **dict(cfg.train.loss_options)),
                                _phase_spec(cfg, 0))
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.validate(module, _loader(cfg, data, valid, False, 0), verbose=False)
    return module.last_val


def test_cascade_under_ddp_matches_one_process_and_resumes(tmp_path, cli_env, classifier_validation):
    recipe = _recipe(tmp_path)
    command = [sys.executable, "-m", "cxrlab.cli.main", "seg", "train", str(recipe), "--no-progress",
               "train.strategy=ddp", "train.devices=2", "train.accelerator=cpu"]
    done = subprocess.run(command, env=cli_env, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "DDP worker of rank 1" in done.stderr, done.stderr[-4000:]
    run_dir = tmp_path / "runs" / "cascade"
    assert "run directory" in done.stdout
    for role in ("baseline", "one_case"):
        row = pd.read_csv(run_dir / role / "history.csv").iloc[-1]
        expected = _unet_validation(run_dir, role)
        for key in ("val_dice_per_image", "val_dice", "val_iou", "val_fp_masks_on_empty", "val_loss"):
            assert row[key] == pytest.approx(expected[key], abs=1e-6), (role, key)
        assert (run_dir / role / "checkpoints" / "phase0" / "last.ckpt").is_file()
    gate = pd.read_csv(run_dir / "gate" / "history.csv").iloc[-1]
    expected = classifier_validation(run_dir / "gate", 0)
    for key in ("val_auroc", "val_loss"):
        assert gate[key] == pytest.approx(expected[key], abs=1e-6), ("gate", key)
    assert (run_dir / "metrics.json").is_file()

    # Killed after the One Case U-Net's last epoch-end checkpoint, before its final weights
    # and the gate: --resume (on the same two ranks: an epoch's length depends on the world
    # size) keeps the baseline and picks up from there.
    final = run_dir / "one_case" / "checkpoints" / "phase0" / "final_weights.pt"
    before = torch.load(final, map_location="cpu", weights_only=True)
    final.unlink()
    (run_dir / "metrics.json").unlink()
    baseline_best = (run_dir / "baseline" / "best.pt").stat().st_mtime_ns
    for path in sorted((run_dir / "gate").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (run_dir / "gate").rmdir()
    resumed = subprocess.run([*command, "--resume"], env=cli_env, capture_output=True, text=True, timeout=500)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "baseline phase 0 already finished" in resumed.stderr, resumed.stderr[-4000:]
    assert "resuming one_case phase 0 at epoch 1" in resumed.stderr, resumed.stderr[-4000:]
    after = torch.load(final, map_location="cpu", weights_only=True)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert (run_dir / "baseline" / "best.pt").stat().st_mtime_ns == baseline_best
    assert (run_dir / "gate" / "history.csv").is_file() and (run_dir / "metrics.json").is_file()
