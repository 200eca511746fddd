"""End-to-end classification on SYNTHETIC phantoms: train, resume, DAM, evaluate, predict, compare."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
import torch

from cxrlab.errors import ConfigError
from cxrlab.tasks.classification.evaluate import evaluate_run
from cxrlab.tasks.classification.train import train
from cxrlab.inference.classifier import predict_images
from cxrlab.report.compare import compare_runs


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_training_reaches_high_auroc_on_an_easy_finding(make_recipe):
    # The five CheXpert competition tasks learnt jointly; edema (bilateral perihilar haze)
    # is the easy finding on phantoms.
    cfg = make_recipe(**{
        "name": "easy",
        "data.tasks": ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"],
        "data.size": 64,
        "train.phases": [{"epochs": 10, "lr": 3e-3}],
        "train.limit_train_batches": None,
    })
    started = time.perf_counter()
    run_dir = train(cfg, progress=False)
    seconds = time.perf_counter() - started
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["tasks"]["Edema"]["auroc"] >= 0.9, metrics["test"]["tasks"]["Edema"]
    print(f"easy-finding run: {seconds:.0f} s, test AUROC {metrics['test']['mean_auroc']:.3f}")
    for name in ("config.yaml", "split.json", "history.csv", "best.json", "best_auroc.pt",
                 "best_loss.pt", "predictions_valid.csv", "predictions_test.csv", "train.log"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "curves_test" / "roc.png").is_file()
    history = pd.read_csv(run_dir / "history.csv")
    assert len(history) == 10 and history["val_auroc"].notna().all()
    split = json.loads((run_dir / "split.json").read_text())
    parts = [set(split[s]["patients"]) for s in ("train", "valid", "test")]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "finished"


def test_resumed_run_ends_with_the_same_weights(make_recipe):
    # With training augmentation on: its random stream must follow the run's seed and epoch
    # (albumentations keeps its own RNG, which global seeding does not reach).
    augmented = {"data.augment": True}
    clean = train(make_recipe(name="clean", **augmented), progress=False)

    class Killed(RuntimeError):
        pass

    def kill(phase, epoch):
        if phase == 1 and epoch == 1:
            raise Killed("simulated kill")

    cfg = make_recipe(name="killed", **augmented)
    with pytest.raises(Killed):
        train(cfg, progress=False, epoch_hook=kill)
    assert json.loads((clean.parent / "killed" / "status.json").read_text())["state"] == "failed"
    with pytest.raises(ConfigError, match="--resume"):
        train(cfg, progress=False)
    resumed = train(cfg, resume=True, progress=False)
    a = _weights(clean / "checkpoints" / "phase1" / "final_weights.pt")
    b = _weights(resumed / "checkpoints" / "phase1" / "final_weights.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert json.loads((resumed / "metrics.json").read_text())["test"]["mean_auroc"] == pytest.approx(
        json.loads((clean / "metrics.json").read_text())["test"]["mean_auroc"])


def test_dam_fine_tuning_runs_end_to_end_and_compares(make_recipe):
    bce = train(make_recipe(name="bce", **{"data.tasks": ["Pleural Effusion"],
                                          "train.phases": [{"epochs": 2, "lr": 3e-3}]}), progress=False)
    dam = train(make_recipe(name="dam", **{
        "data.tasks": ["Pleural Effusion"],
        "train.phases": [
            {"epochs": 1, "lr": 3e-3, "loss": "bce"},
            {"epochs": 2, "lr": 0.05, "loss": "aucm", "optimizer": "pesg", "schedule": "constant",
             "reset_head": True, "decay_epochs": [1]},
        ],
    }), progress=False)
    metrics = json.loads((dam / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["tasks"]["Pleural Effusion"]["auroc"] <= 1.0
    table = compare_runs(bce, dam, split="test")
    assert list(table["task"]) == ["Pleural Effusion"]
    row = table.iloc[0]
    assert row["delta_auroc"] == pytest.approx(row["auroc_b"] - row["auroc_a"])
    assert 0.0 <= row["p_value"] <= 1.0
    labelled = pd.read_csv(bce / "predictions_test.csv")["label_Pleural Effusion"].notna().sum()
    assert row["n"] == labelled


def test_evaluate_and_predict_real_dicom(make_recipe, rg1_dir):
    run_dir = train(make_recipe(name="pred", **{"train.phases": [{"epochs": 1, "lr": 3e-3}]}), progress=False)
    metrics = evaluate_run(run_dir, splits=["test"])
    assert set(metrics["test"]["tasks"]) == {"Cardiomegaly", "Pleural Effusion"}
    preds = predict_images(run_dir / "best_auroc.pt", [rg1_dir / "RG1_UNCR.dcm", rg1_dir / "RG1_J2KR.dcm"])
    assert len(preds) == 2
    probs = preds[["prob_Cardiomegaly", "prob_Pleural Effusion"]].to_numpy()
    assert np.all((probs >= 0) & (probs <= 1))
    # Lossless JPEG 2000 decodes to the same pixels, so the predictions agree exactly.
    np.testing.assert_allclose(probs[0], probs[1], rtol=0, atol=1e-6)


def test_a_lone_last_training_batch_is_dropped_not_crashed(make_recipe):
    """The concat head's BatchNorm1d cannot train on one image: a training split whose size
    leaves a last batch of 1 drops that batch; validation keeps every image."""
    from cxrlab.tasks.classification.data import make_loader, prepare_data

    cfg = make_recipe()
    prepared = prepare_data(cfg)
    n = len(prepared.splits["train"].indices)
    cfg = make_recipe(**{"data.batch_size": n - 1})
    train_loader = make_loader(prepared, "train", cfg, train=True)
    assert [len(b["image"]) for b in train_loader] == [n - 1]
    valid_loader = make_loader(prepared, "valid", cfg, train=False)
    assert sum(len(b["image"]) for b in valid_loader) == len(prepared.splits["valid"].indices)
    cfg = make_recipe(**{"data.batch_size": 4})
    sizes = [len(b["image"]) for b in make_loader(prepared, "train", cfg, train=True)]
    assert sum(sizes) == n - (1 if n % 4 == 1 else 0) and min(sizes) > 1


def test_normalizing_on_the_device_trains_the_same_weights(make_recipe):
    """``data.normalize_on=device``: the loaders ship uint8 batches (a twelfth of the bytes)
    and the module normalizes them after the transfer, with the loader's table, so the run
    is the same run bit for bit; evaluation loaders keep normalizing themselves."""
    from cxrlab.config import config_from_dict
    from cxrlab.engine.module import ClassifierModule
    from cxrlab.tasks.classification.data import make_loader, normalize_on_device, prepare_data

    three = {"data.channels": 3, "data.normalization": "imagenet", "data.augment": True}
    cfg = make_recipe(**three, **{"data.normalize_on": "device"})
    assert normalize_on_device(cfg)
    assert not normalize_on_device(make_recipe(**{"data.normalize_on": "loader"}))
    assert not normalize_on_device(make_recipe(**{"train.accelerator": "cpu"}))
    prepared = prepare_data(cfg)
    floats = next(iter(make_loader(prepared, "valid", cfg, train=False)))
    raw = next(iter(make_loader(prepared, "valid", cfg, train=False, normalize=False)))
    assert floats["image"].dtype == torch.float32 and raw["image"].dtype == torch.uint8
    assert raw["image"].shape[1] == 1 and floats["image"].shape[1] == prepared.channels
    module = ClassifierModule(torch.nn.Identity(), torch.nn.BCEWithLogitsLoss(), prepared.task_names,
                              prepared.label_columns, np.zeros(0), np.zeros((0, 1)), optim=None,
                              input_norm=(prepared.channels, prepared.normalization))
    moved = module.on_after_batch_transfer(raw, 0)
    assert torch.equal(moved["image"], floats["image"])
    assert module.on_after_batch_transfer(floats, 0)["image"] is floats["image"]

    short = {**three, "train.phases": [{"epochs": 2, "lr": 3e-3}], "train.limit_train_batches": 2}
    on_loader = train(make_recipe(name="on-loader", **short, **{"data.normalize_on": "loader"}), progress=False)
    on_device = train(make_recipe(name="on-device", **short, **{"data.normalize_on": "device"}), progress=False)
    a = _weights(on_loader / "checkpoints" / "phase0" / "final_weights.pt")
    b = _weights(on_device / "checkpoints" / "phase0" / "final_weights.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    with pytest.raises(ConfigError, match="normalize_on"):
        config_from_dict(make_recipe().to_dict(), ["data.normalize_on=gpu"])
