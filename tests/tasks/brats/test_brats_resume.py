"""A BraTS training that dies after epoch k resumes at epoch k+1 and ends with exactly the weights of
an uninterrupted run (CPU, deterministic): every random stream of an epoch (MONAI's patch crops,
flips and intensity jitter, the loader's shuffle) is re-seeded from (seed, stage, epoch).

The death is a crash raised when epoch k starts, after epoch k-1's ``last.ckpt`` was renamed into
place (the in-process form of tests/engine/test_kill_resume.py's SIGKILL, which needs a fresh
interpreter per run)."""

from __future__ import annotations

import csv

import pytest
import torch

pytest.importorskip("monai")

EPOCHS = 3
CRASH_AT = 2
SMALL = ["model.channels=[4,8]", "model.strides=[2]", "data.patch=[16,16,16]", "data.samples_per_case=1",
         "data.batch_size=2", f"train.epochs={EPOCHS}", "train.limit_train_batches=2", "inference.overlap=0"]


class Crash(RuntimeError):
    """The injected death."""


def _weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def test_crashed_run_resumes_at_the_next_epoch_with_identical_weights(tiny_run, brats_recipe, tmp_path, monkeypatch):
    from cxrlab.config.brats import config_from_mapping
    from cxrlab.tasks.brats import train as brats_train

    _, out = tiny_run
    base = [f"phantoms.out={out / 'phantoms'}", f"output.root={tmp_path}", *SMALL]
    clean = brats_train.train(config_from_mapping(brats_recipe, [*base, "name=clean"]))

    crashing = config_from_mapping(brats_recipe, [*base, "name=crashed"])
    original = brats_train.ReseedEpoch.on_train_epoch_start

    def crash_at_epoch(self, trainer, pl_module):
        if trainer.current_epoch == CRASH_AT:
            raise Crash(f"killed at the start of epoch {CRASH_AT}")
        original(self, trainer, pl_module)

    monkeypatch.setattr(brats_train.ReseedEpoch, "on_train_epoch_start", crash_at_epoch)
    with pytest.raises(Crash):
        brats_train.train(crashing)
    run_dir = tmp_path / "crashed"
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["epoch"] == CRASH_AT - 1 and not (run_dir / "metrics.json").exists()

    monkeypatch.setattr(brats_train.ReseedEpoch, "on_train_epoch_start", original)
    started = []
    monkeypatch.setattr(brats_train.ReseedEpoch, "on_train_epoch_start",
                        lambda self, trainer, module: (started.append(trainer.current_epoch),
                                                       original(self, trainer, module)))
    assert brats_train.train(crashing, resume=True) == run_dir
    assert started == list(range(CRASH_AT, EPOCHS))
    with open(run_dir / "history.csv", newline="") as handle:
        epochs = [int(row["epoch"]) for row in csv.DictReader(handle)]
    assert epochs == list(range(EPOCHS))
    expected, got = _weights(clean), _weights(run_dir)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert (run_dir / "metrics.json").is_file()
