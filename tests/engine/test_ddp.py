"""Classification under DDP: two CPU processes (gloo) through the real ``cxrlab train``.

The validation metrics rank 0 records (history.csv) come from predictions gathered from both
ranks with DistributedSampler's padding duplicates dropped, so they must equal what one process
computes from the saved weights on the whole validation split.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
import yaml

import cxrlab
from cxrlab.config import load_config
from cxrlab.engine.module import ClassifierModule
from cxrlab.models import create_classifier
from cxrlab.tasks.classification.data import make_loader, prepare_data
from cxrlab.tasks.classification.train import _make_loss, _phase_spec


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(cxrlab.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _one_process_metrics(run_dir: Path, phase: int) -> dict[str, float]:
    """Validation metrics of the phase's final weights, computed in this single process."""
    cfg = load_config(run_dir / "config.yaml", ["train.strategy=auto", "train.devices=1"])
    prepared = prepare_data(cfg)
    model = create_classifier(cfg.model.arch, num_classes=len(prepared.task_names), in_chans=prepared.channels,
                              head=cfg.model.head, pretrained=None, dropout=cfg.model.dropout)
    state = torch.load(run_dir / "checkpoints" / f"phase{phase}" / "final_weights.pt", map_location="cpu",
                       weights_only=True)
    model.load_state_dict(state)
    valid = prepared.splits["valid"]
    module = ClassifierModule(model, _make_loss(cfg, phase, prepared), prepared.task_names, prepared.label_columns,
                              item_study_ids=valid.study_ids, item_labels=prepared.task_labels("valid"),
                              optim=_phase_spec(cfg, phase))
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.validate(module, make_loader(prepared, "valid", cfg, train=False), verbose=False)
    return module.last_val


def test_classification_under_ddp_matches_one_process(tmp_path, tiny_recipe):
    recipe = tiny_recipe(tmp_path / "runs", name="ddp", **{"data.size": 32, "train.limit_train_batches": 2})
    recipe["train"]["phases"] = [{"epochs": 1, "freeze_body": True, "lr": 3e-3},
                                 {"epochs": 1, "lr_body": 2e-3, "lr_head": 3e-3}]
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(recipe))
    command = [sys.executable, "-m", "cxrlab.cli.main", "train", str(path), "--no-progress",
               "train.strategy=ddp", "train.devices=2", "train.accelerator=cpu"]
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    # Both ranks really joined (rank 1 is the command re-run by Lightning; it shares our stderr).
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in done.stderr, done.stderr[-4000:]
    run_dir = tmp_path / "runs" / "ddp"
    assert "run directory" in done.stdout
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history["phase"]) == [0, 1]
    for phase in (0, 1):
        row = history[history["phase"] == phase].iloc[-1]
        expected = _one_process_metrics(run_dir, phase)
        for key in ("val_auroc", "val_auroc/Cardiomegaly", "val_auroc/Pleural Effusion"):
            assert row[key] == pytest.approx(expected[key], abs=1e-6), (phase, key)
    assert (run_dir / "checkpoints" / "phase1" / "last.ckpt").is_file()
    assert (run_dir / "metrics.json").is_file()

    # --resume under DDP: as if killed after phase 1's epoch-end checkpoint but before its
    # final weights; both ranks restore last.ckpt and the run ends with the same weights.
    final = run_dir / "checkpoints" / "phase1" / "final_weights.pt"
    before = torch.load(final, map_location="cpu", weights_only=True)
    final.unlink()
    (run_dir / "metrics.json").unlink()
    resumed = subprocess.run([*command, "--resume"], env=_env(), capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "phase 0 already finished" in resumed.stderr
    assert "resuming phase 1 at epoch 1" in resumed.stderr, resumed.stderr[-4000:]
    after = torch.load(final, map_location="cpu", weights_only=True)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert (run_dir / "metrics.json").is_file()
