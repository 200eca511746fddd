"""The BraTS tests' shared trained run: a tiny 3D U-Net on SYNTHETIC phantoms, trained once per session
(the task, dashboard and two-stage tests read it and its phantoms)."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("monai")

TINY_RECIPE: dict[str, Any] = {
    "name": "tiny", "seed": 0,
    "phantoms": {"layout": "brats2020", "n": 10, "size": 32, "seed": 0},
    "data": {"split": {"train": 0.6, "valid": 0.1, "test": 0.3}, "patch": [32, 32, 32], "samples_per_case": 2,
             "class_ratios": [1, 1, 1, 1], "batch_size": 4, "num_workers": 0},
    "model": {"arch": "unet", "channels": [8, 16, 32], "strides": [2, 2]},
    "train": {"epochs": 15, "lr": 0.003, "accelerator": "cpu", "devices": 1, "deterministic": True},
    "inference": {"overlap": 0.25, "sw_batch_size": 4, "tta": False},
    "survival": {"regressor": "random_forest", "source": "reference", "folds": 3},
    "output": {"mlflow": False},
}
"""The tiny setting; tests change it with ``key=value`` overrides."""


@pytest.fixture(scope="session")
def brats_recipe() -> dict[str, Any]:
    """:data:`TINY_RECIPE` (tests load it with their own overrides)."""
    return TINY_RECIPE


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """``(run_dir, out)``: the trained tiny run and the folder holding ``phantoms/`` and ``runs/``."""
    from cxrlab.config.brats import config_from_mapping
    from cxrlab.tasks.brats.train import train

    out = tmp_path_factory.mktemp("brats")
    cfg = config_from_mapping(TINY_RECIPE, [f"phantoms.out={out / 'phantoms'}", f"output.root={out / 'runs'}"])
    return train(cfg), out
