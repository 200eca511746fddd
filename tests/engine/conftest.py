"""Helpers of the engine tests that run ``cxrlab`` commands in subprocesses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import cxrlab


@pytest.fixture
def cli_env() -> dict[str, str]:
    """The environment of a ``python -m cxrlab.cli.main`` subprocess: this checkout's src first, no MLflow."""
    env = dict(os.environ)
    src = str(Path(cxrlab.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@pytest.fixture
def classifier_validation():
    """``validate(run_dir, phase)``: a classification run's validation metrics of one phase's
    final weights, recomputed in this single process over the whole validation split."""
    import lightning as L
    import torch

    from cxrlab.config import load_config
    from cxrlab.engine.module import ClassifierModule
    from cxrlab.models import create_classifier
    from cxrlab.tasks.classification.data import make_loader, prepare_data
    from cxrlab.tasks.classification.train import _make_loss, _phase_spec

    def validate(run_dir: Path, phase: int) -> dict[str, float]:
        cfg = load_config(run_dir / "config.yaml", ["train.strategy=auto", "train.devices=1"])
        prepared = prepare_data(cfg)
        model = create_classifier(cfg.model.arch, num_classes=len(prepared.task_names), in_chans=prepared.channels,
                                  head=cfg.model.head, pretrained=None, dropout=cfg.model.dropout)
        state = torch.load(run_dir / "checkpoints" / f"phase{phase}" / "final_weights.pt", map_location="cpu",
                           weights_only=True)
        model.load_state_dict(state)
        valid = prepared.splits["valid"]
        module = ClassifierModule(model, _make_loss(cfg, phase, prepared), prepared.task_names,
                                  prepared.label_columns, item_study_ids=valid.study_ids,
                                  item_labels=prepared.task_labels("valid"), optim=_phase_spec(cfg, phase))
        trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                            enable_model_summary=False)
        trainer.validate(module, make_loader(prepared, "valid", cfg, train=False), verbose=False)
        return module.last_val

    return validate
