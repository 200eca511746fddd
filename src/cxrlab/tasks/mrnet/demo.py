"""The MRNet demo: SYNTHETIC knee phantoms, the whole grid at a small size, the paper's table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cxrlab.config import OutputConfig
from cxrlab.config.mrnet import load_mrnet_config
from cxrlab.tasks.mrnet.train import train

DEMO_RECIPE = Path(__file__).resolve().parents[4] / "configs" / "demo_mrnet.yaml"


def run_demo(out: str | Path, recipe: str | Path | None = None, overrides: list[str] | None = None,
             progress: bool = False) -> Path:
    """Train ``configs/demo_mrnet.yaml`` (or ``recipe``) with its run root set to ``out``; returns the run."""
    cfg = load_mrnet_config(recipe or DEMO_RECIPE, overrides or [])
    cfg = dataclasses.replace(cfg, output=OutputConfig(root=str(out), mlflow=cfg.output.mlflow,
                                                       experiment=cfg.output.experiment))
    return train(cfg, overwrite=True, progress=progress)
