"""Screening pipeline pieces: preprocessing order, store/items, SVM operating point, recipes,
real VinDr label counts, prediction and evaluation on a small trained run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrlab.data.screening import (NORMAL, OTHERS, TARGET, ScreeningItems, dilate_mask,
                                   screening_preprocess, screening_targets)
from cxrlab.data.synthetic_screening import ADAPTER_OPTIONS, write_screening_dataset
from cxrlab.data.transforms import PreprocessConfig, apply_clahe, minmax_scale, preprocess
from cxrlab.errors import ConfigError
from cxrlab.config.screening import SEED003_RISK_GROUPS, load_screening_config, screening_config_from_dict
from cxrlab.tasks.screening.data import prepare_screening_data
from cxrlab.tasks.screening.svm import choose_operating_point, fit_svm

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_preprocess_follows_seed_order_clahe_before_resize():
    rng = np.random.default_rng(0)
    pixels = rng.normal(1000, 200, (90, 60)).astype(np.float32)
    pixels[:5, :5] = 1e5                                  # burned-in marker, clipped away
    cfg = PreprocessConfig(size=32, clahe=True)
    mask = np.zeros((1, 90, 60), dtype=bool)
    mask[0, 40:50, 10:20] = True
    image, masks = screening_preprocess(pixels, cfg, mask)
    assert image.dtype == np.uint8 and image.shape == (32, 32) and masks.shape == (1, 32, 32)
    # by hand: clip, 0-255, pad 60 -> 90 wide (15 px each side), CLAHE, then resize
    clipped = np.clip(pixels, *np.percentile(pixels, [0.5, 99.5]))
    manual = np.rint(minmax_scale(clipped) * 255).astype(np.uint8)
    manual = apply_clahe(np.pad(manual, ((0, 0), (15, 15))), 2.0, 8)
    import cv2
    manual = cv2.resize(manual, (32, 32), interpolation=cv2.INTER_LANCZOS4)
    assert np.abs(image.astype(int) - manual.astype(int)).max() <= 1
    assert not np.array_equal(image, preprocess(pixels, cfg))    # transforms: resize first
    ys, xs = np.nonzero(masks[0])
    assert 40 * 32 / 90 - 1 <= ys.min() and xs.min() >= (15 + 10) * 32 / 90 - 1
    equalized = screening_preprocess(pixels, PreprocessConfig(size=32, equalize=True))
    assert not np.array_equal(equalized, image)


@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("screen") / "data"
    return write_screening_dataset(out, 80, 32, 0, seen=("effusion", "cardiomegaly"),
                                   unseen=("edema",), weak_fraction=0.4)


def _recipe(data_dir: Path, root: Path, **extra) -> dict:
    recipe = {
        "name": "tiny", "data": {
            "dataset": "generic", "options": {"csv": str(data_dir / "labels.csv"),
                                              **ADAPTER_OPTIONS},
            "diseases": ["Effusion", "Cardiomegaly"], "unseen": ["Edema"], "size": 32,
            "dilation": {"size": 3}, "batch_size": 16},
        "model": {"encoder": "test_resnet", "pretrained": None, "decoder_channels": [8, 8, 8, 8]},
        "train": {"phase1_epochs": 1, "phase2_epochs": 1, "patience": 1, "device": "cpu",
                  "threads": 1, "workers": 2},
        "risk_groups": {"critical": ["Effusion"], "cardiomegaly": ["Cardiomegaly"]},
        "output": {"root": str(root), "cost_batch_sizes": [2]},
    }
    for key, value in extra.items():
        recipe[key].update(value)
    return recipe


def test_store_items_targets_and_masks(phantom_set, tmp_path):
    cfg = screening_config_from_dict(_recipe(phantom_set, tmp_path))
    data = prepare_screening_data(cfg)
    table = data.dataset.table
    assert set(data.parts["weak_train"]) == set(np.flatnonzero(table["weak"] & (table["split"] == "train")))
    edema = data.dataset.labels[:, data.dataset.pathologies.index("Edema")] == 1
    assert set(data.parts["unseen"]) == set(np.flatnonzero(edema))
    for part in ("hard_train", "weak_train", "valid", "test"):
        assert not edema[data.parts[part]].any()
    # a weak image has no known mask; a hard normal one has a known, empty mask
    weak_row = int(data.parts["weak_train"][0])
    assert not data.store.mask_known(weak_row)
    normal = [i for i in data.parts["hard_train"] if data.truth[i] == 0][0]
    assert data.store.mask_known(normal) and data.store.mask(normal).sum() == 0
    effusion = [i for i in data.parts["hard_train"] if data.targets[i, 0] == TARGET][0]
    items = ScreeningItems(data.store, np.array([effusion, normal]), data.targets, 0,
                           cfg.dilation(), None, 1, "unit")
    item = items[0]
    assert item["image"].shape == (1, 32, 32) and item["target"] == TARGET
    raw = data.store.mask(effusion, 0)
    assert raw.sum() > 0
    assert torch.equal(item["mask"][0], torch.from_numpy(dilate_mask(raw, cfg.dilation())).float())
    assert items[1]["target"] == NORMAL and items[1]["mask"].sum() == 0
    cardio_model = screening_targets(data.dataset.labels, data.dataset.pathologies,
                                     ["Cardiomegaly"])
    assert cardio_model[effusion, 0] in (TARGET, OTHERS)


def test_svm_operating_point_meets_the_requested_sensitivity():
    rng = np.random.default_rng(1)
    truth = (rng.random(300) < 0.6).astype(float)
    features = rng.normal(size=(300, 6)) + truth[:, None] * 0.8
    cfg = screening_config_from_dict({"data": {"diseases": ["A"]}})
    svm = fit_svm(cfg, features, truth)
    scores = svm.decision_function(features)
    for target in (0.99, 0.95, 0.8):
        point = choose_operating_point(truth, scores, target)
        called = scores >= point["threshold"]
        sensitivity = called[truth == 1].mean()
        assert sensitivity >= target and point["sensitivity"] == pytest.approx(sensitivity)
        assert point["specificity"] == pytest.approx((~called[truth == 0]).mean())
    assert choose_operating_point(truth, scores, 0.8)["specificity"] > point["specificity"] - 1e-9
    with pytest.raises(ConfigError):
        fit_svm(cfg, features, np.ones(300))


def test_recipes_load_and_are_checked():
    seed = load_screening_config(CONFIGS / "screening_seed003.yaml")
    assert len(seed.data.diseases) == 13 and seed.train.lam == 0.8 and seed.data.size == 1024
    assert seed.svm.target_sensitivity == 0.99 and seed.train.patience == 50
    grouped = [d for members in seed.risk_groups.values() for d in members]
    assert sorted(grouped) == sorted(seed.data.diseases)
    assert sum(len(v) for v in SEED003_RISK_GROUPS.values()) == 13
    demo = load_screening_config(CONFIGS / "demo_screening.yaml")
    assert set(demo.data.unseen).isdisjoint(demo.data.diseases)
    with pytest.raises(ConfigError):
        screening_config_from_dict({"data": {"diseases": ["A"], "unseen": ["A"]}})
    with pytest.raises(ConfigError):
        screening_config_from_dict({"data": {"diseases": ["A"]}, "model": {"variants": ["x"]}})
    with pytest.raises(ConfigError):
        screening_config_from_dict({"data": {"diseases": ["A"], "dilation": {"shape": "disc"}}})
    with pytest.raises(ConfigError):
        screening_config_from_dict({"data": {"diseases": ["A"]}, "svm": {"fit_on": "test"}})


def test_vindr_targets_on_the_real_label_file(xrv_data):
    """Seed 003 targets from the real VinDr-CXR labels torchxrayvision ships."""
    from cxrlab.data.datasets import load_dataset
    from cxrlab.data.screening import abnormal_truth

    seed = load_screening_config(CONFIGS / "screening_seed003.yaml")
    ds = load_dataset("vindr", csv=xrv_data / "vinbigdata-train.csv.gz", check_files=False)
    targets = screening_targets(ds.labels, ds.pathologies, seed.data.diseases)
    truth = abnormal_truth(ds.labels)
    normals = int((truth == 0).sum())
    assert len(ds) == 15000 and normals == int((ds.labels.sum(axis=1) == 0).sum())
    assert normals > 10000          # VinDr: about 70 % "No finding"
    for d, name in enumerate(seed.data.diseases):
        column = ds.labels[:, ds.pathologies.index(name)]
        assert (targets[:, d] == TARGET).sum() == (column == 1).sum()
        assert (targets[:, d] == NORMAL).sum() == normals
        assert (targets[:, d] == OTHERS).sum() == len(ds) - normals - (column == 1).sum()


@pytest.fixture(scope="module")
def tiny_run(phantom_set, tmp_path_factory):
    from cxrlab.tasks.screening.pipeline import train_screening

    root = tmp_path_factory.mktemp("runs")
    recipe = {**_recipe(phantom_set, root),
              "ablations": [{"name": "two_class",
                             "overrides": ["model.num_classes=2", "train.workers=1"]}]}
    cfg = screening_config_from_dict(recipe)
    return train_screening(cfg)


def test_tiny_run_writes_every_report(tiny_run):
    report = json.loads((tiny_run / "report.json").read_text())
    assert set(report["variants"]) == {"ensemble", "shared"}
    for key in ("table2_confusion", "table3_risk_groups", "table9_unseen", "ablations", "cost"):
        assert Path(report["tables"][key]).is_file()
        assert (tiny_run / "tables" / f"{key}.md").is_file()
    import pandas as pd

    confusion = pd.read_csv(report["tables"]["table2_confusion"])
    internal = confusion[(confusion["variant"] == "ensemble") & (confusion["set"] == "internal")]
    row = internal.iloc[0]
    predictions = pd.read_csv(tiny_run / "predictions" / "ensemble_internal.csv")
    truth, pred = predictions["abnormal_truth"], predictions["abnormal_pred"]
    assert row["ai_normal_ref_abnormal"] == ((truth == 1) & (pred == 0)).sum()
    assert row["ai_normal_ref_normal"] == ((truth == 0) & (pred == 0)).sum()
    point = json.loads((tiny_run / "ensemble" / "operating_point.json").read_text())
    assert point["sensitivity"] >= 0.99 and point["target_sensitivity"] == 0.99
    ablations = pd.read_csv(report["tables"]["ablations"])
    assert list(ablations["ablation"]) == ["baseline", "two_class"]
    cost = pd.read_csv(report["tables"]["cost"])
    ensemble = cost[cost["variant"] == "ensemble"].iloc[0]
    shared = cost[cost["variant"] == "shared"].iloc[0]
    assert ensemble["gflops_per_image"] > 1.5 * shared["gflops_per_image"]   # 2 encoders vs 1
    unseen = pd.read_csv(report["tables"]["table9_unseen"])
    assert set(unseen["unseen_disease"]) == {"Edema"}


def test_predict_and_evaluate_reproduce(tiny_run, phantom_set):
    from cxrlab.tasks.screening.evaluate import evaluate_screening
    from cxrlab.inference.screening import predict_screening

    before = json.loads((tiny_run / "report.json").read_text())
    evaluate_screening(tiny_run, measure_cost=False)
    again = json.loads((tiny_run / "report.json").read_text())     # NaN written as null
    assert again["variants"]["ensemble"]["sets"] == before["variants"]["ensemble"]["sets"]
    import pandas as pd

    stored = pd.read_csv(tiny_run / "predictions" / "ensemble_internal.csv").head(3)
    frame = predict_screening(tiny_run, list(stored["path"]))
    assert len(frame) == 3
    assert np.allclose(frame["svm_score"], stored["svm_score"], atol=1e-4)
    assert ((frame["decision"] == "abnormal") == (stored["abnormal_pred"] == 1)).all()
    assert frame["risk_group"].isin(["none", "unspecified", "critical", "cardiomegaly"]).all()
    assert frame["likely_diseases"].str.contains("Effusion=").all()


def test_operating_point_keeps_a_margin_below_the_last_abnormal_case():
    truth = np.array([0, 0, 0, 1, 1, 1, 1], dtype=float)
    scores = np.array([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0, 4.0])
    point = choose_operating_point(truth, scores, 0.99)
    assert point["upper_threshold"] == 1.0 and point["threshold"] == 0.0
    assert point["sensitivity"] == 1.0 and point["specificity"] == 1.0
    point = choose_operating_point(truth, scores, 0.5)          # 2 of 4 abnormal needed
    assert point["upper_threshold"] == 3.0 and point["threshold"] == 2.5
    assert point["sensitivity"] == 0.5
