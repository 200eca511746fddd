"""A real kill mid-phase: SIGKILL a ``cxrlab train`` subprocess after an epoch, then ``--resume``.

The run must resume at the epoch after its last epoch-end checkpoint (not at the start of the
phase) and end with exactly the weights of an uninterrupted run (CPU, deterministic mode).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

EPOCHS = 4


def _command(recipe: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cxrlab.cli.main", "train", str(recipe), "--no-progress", *extra]


def _recipe(tmp_path: Path, tiny_recipe, name: str) -> Path:
    # One phase of several short epochs, augmentation on (its RNG must follow the epoch seed).
    recipe = tiny_recipe(tmp_path / "runs", name=name, **{"data.size": 32, "data.augment": True,
                                                          "train.limit_train_batches": 3})
    recipe["train"]["phases"] = [{"epochs": EPOCHS, "lr": 3e-3}]
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "phase0" / "final_weights.pt", map_location="cpu",
                      weights_only=True)


def test_sigkill_mid_phase_resumes_at_the_next_epoch(tmp_path, tiny_recipe, cli_env):
    env = cli_env
    clean = _recipe(tmp_path, tiny_recipe, "clean")
    subprocess.run(_command(clean), env=env, check=True, capture_output=True, timeout=300)

    killed = _recipe(tmp_path, tiny_recipe, "killed")
    run_dir = tmp_path / "runs" / "killed"
    last = run_dir / "checkpoints" / "phase0" / "last.ckpt"
    process = subprocess.Popen(_command(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not last.is_file():
            assert process.poll() is None, "training ended before its first epoch-end checkpoint"
            assert time.monotonic() < deadline, "no epoch-end checkpoint within 240 s"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    # The checkpoint is renamed into place whole, so it always loads.
    saved_epoch = int(torch.load(last, map_location="cpu", weights_only=False)["epoch"])
    assert saved_epoch < EPOCHS - 1, "the phase finished before the kill; make the epochs longer"
    assert not (run_dir / "checkpoints" / "phase0" / "final_weights.pt").exists()

    resumed = subprocess.run(_command(killed, "--resume"), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming phase 0 at epoch {saved_epoch + 1}" in resumed.stderr, resumed.stderr[-3000:]

    history = [row for row in (run_dir / "history.csv").read_text().splitlines()[1:] if row]
    assert len(history) == EPOCHS
    a, b = _weights(tmp_path / "runs" / "clean"), _weights(run_dir)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
