"""Classification under DDP: two CPU processes (gloo) through the real ``cxrlab train``.

The validation metrics rank 0 records (history.csv) come from predictions gathered from both
ranks with the samplers' padding repeats dropped, so they must equal what one process
computes from the saved weights on the whole validation split — the loss included, since
``val_loss`` is a mean of per-item losses.
"""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml


def test_classification_under_ddp_matches_one_process(tmp_path, tiny_recipe, cli_env, classifier_validation):
    recipe = tiny_recipe(tmp_path / "runs", name="ddp", **{"data.size": 32, "train.limit_train_batches": 2})
    recipe["train"]["phases"] = [{"epochs": 1, "freeze_body": True, "lr": 3e-3},
                                 {"epochs": 1, "lr_body": 2e-3, "lr_head": 3e-3}]
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(recipe))
    command = [sys.executable, "-m", "cxrlab.cli.main", "train", str(path), "--no-progress",
               "train.strategy=ddp", "train.devices=2", "train.accelerator=cpu"]
    done = subprocess.run(command, env=cli_env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    # Both ranks really joined (rank 1 is the command re-run by Lightning; it shares our stderr).
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in done.stderr, done.stderr[-4000:]
    run_dir = tmp_path / "runs" / "ddp"
    assert "run directory" in done.stdout
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history["phase"]) == [0, 1]
    for phase in (0, 1):
        row = history[history["phase"] == phase].iloc[-1]
        expected = classifier_validation(run_dir, phase)
        for key in ("val_auroc", "val_auroc/Cardiomegaly", "val_auroc/Pleural Effusion", "val_loss"):
            assert row[key] == pytest.approx(expected[key], abs=1e-6), (phase, key)
    assert (run_dir / "checkpoints" / "phase1" / "last.ckpt").is_file()
    assert (run_dir / "metrics.json").is_file()

    # --resume under DDP: as if killed after phase 1's epoch-end checkpoint but before its
    # final weights; both ranks restore last.ckpt and the run ends with the same weights.
    final = run_dir / "checkpoints" / "phase1" / "final_weights.pt"
    before = torch.load(final, map_location="cpu", weights_only=True)
    final.unlink()
    (run_dir / "metrics.json").unlink()
    resumed = subprocess.run([*command, "--resume"], env=cli_env, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "phase 0 already finished" in resumed.stderr
    assert "resuming phase 1 at epoch 1" in resumed.stderr, resumed.stderr[-4000:]
    after = torch.load(final, map_location="cpu", weights_only=True)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert (run_dir / "metrics.json").is_file()


def test_uint8_batches_normalized_on_each_rank_match_one_process(tmp_path, tiny_recipe, cli_env,
                                                                 classifier_validation):
    """``data.normalize_on=device`` under DDP: every rank receives uint8 batches and
    normalizes them after the transfer; the gathered validation metrics equal what one
    process computes from the saved weights with the float loader."""
    recipe = tiny_recipe(tmp_path / "runs", name="ddp8", **{
        "data.size": 32, "data.channels": 3, "data.normalization": "imagenet",
        "data.normalize_on": "device", "train.limit_train_batches": 2})
    recipe["train"]["phases"] = [{"epochs": 1, "lr": 3e-3}]
    path = tmp_path / "ddp8.yaml"
    path.write_text(yaml.safe_dump(recipe))
    done = subprocess.run([sys.executable, "-m", "cxrlab.cli.main", "train", str(path), "--no-progress",
                           "train.strategy=ddp", "train.devices=2", "train.accelerator=cpu"],
                          env=cli_env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in done.stderr, done.stderr[-4000:]
    run_dir = tmp_path / "runs" / "ddp8"
    row = pd.read_csv(run_dir / "history.csv").iloc[-1]
    expected = classifier_validation(run_dir, 0)
    for key in ("val_auroc", "val_loss"):
        assert row[key] == pytest.approx(expected[key], abs=1e-6), key
