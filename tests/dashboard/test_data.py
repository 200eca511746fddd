"""Dashboard data layer on a run root made by the real pipelines on phantoms.

:func:`build_run_root` makes the fixture run root the dashboard tests share (built once per
pytest session under the session's base temp folder):

* ``bce`` — a real classification run (``cxrlab.tasks.classification.train.train`` on the CheXpert
  phantoms, 32 px, one epoch); ``dam`` — its copy with perturbed predictions, a different
  loss, and metrics and curves recomputed by the real scorers;
* ``broken/*`` — a truncated ``metrics.json``, a half-written run, an invalid ``config.yaml``;
* ``scaling_demo`` — result rows from ``collect_rows`` on the real run (AUROCs varied per
  grid cell), ``results.csv`` by ``write_results_csv``, the report by ``write_report`` and
  the CAM grid by ``cam_grid`` (the real checkpoint hard-linked into each run);
* ``explain_bce`` / ``localize_bce`` — ``explain_files`` and ``localize`` of the real checkpoint on NIH
  phantoms with boxes;
* ``seg_predict`` — ``export_predictions`` of perturbed truth masks of SIIM phantoms;
  ``pneumothorax_cv`` — fold runs and CV tables in the exact format of
  ``cross_validate`` (``results_frame``, ``markdown_table``) from real segmentation scores;
* ``screening_demo`` — ``report.json``, ``tables/`` and ``predictions/`` in the format of
  ``evaluate_screening``, from the real screening metrics on synthetic decisions.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cxrlab.dashboard import data
from cxrlab.dashboard.index import RunIndex

SMALL_FILES = ("config.yaml", "split.json", "status.json", "best.json", "history.csv", "metrics.json",
               "predictions_valid.csv", "predictions_test.csv")
TASKS = ["Cardiomegaly", "Pleural Effusion"]


# --------------------------------------------------------------------------- the fixture


def build_run_root(base: Path, tiny_recipe: Callable[..., dict]) -> Path:
    """The shared fixture run root under ``base`` (built on the first call, then reused)."""
    root, marker = base / "runs", base / "complete"
    if marker.is_file():
        return root
    shutil.rmtree(base, ignore_errors=True)
    data_dir = base / "data"
    bce = _classification(root, tiny_recipe)
    _derived(bce, root / "dam", loss="aucm", seed=1, noise=0.25)
    _broken(bce, root / "broken")
    from cxrlab.data.synthetic_layouts import write_dataset

    write_dataset("nih", data_dir / "nih", n=24, size=64, seed=1, prevalence=0.5, bbox_fraction=1.0)
    write_dataset("siim", data_dir / "siim", n=16, size=64, seed=0, prevalence=0.5)
    _study(bce, root / "scaling_demo", data_dir / "nih")
    _explain(bce, root, data_dir / "nih")
    _segmentation(root, data_dir / "siim")
    _screening(bce, root / "screening_demo")
    marker.touch()
    return root


def _classification(root: Path, tiny_recipe: Callable[..., dict]) -> Path:
    from cxrlab.config import config_from_dict
    from cxrlab.tasks.classification.train import train

    recipe = tiny_recipe(root, **{"name": "bce", "data.size": 32, "train.schedule": "constant",
                                  "train.phases": [{"epochs": 1, "lr": 3e-3}]})
    return train(config_from_dict(recipe), progress=False)


def _copy_small(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in SMALL_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def _derived(src: Path, dst: Path, loss: str, seed: int, noise: float) -> Path:
    from cxrlab.tasks.classification.evaluate import score_predictions
    from cxrlab.report.curves import save_roc_pr_curves
    from cxrlab.utils import atomic_write_json

    _copy_small(src, dst)
    cfg = yaml.safe_load((dst / "config.yaml").read_text())
    cfg.update(name=dst.name, seed=seed)
    cfg["train"]["loss"] = loss
    (dst / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    metrics = json.loads((src / "metrics.json").read_text())
    rng = np.random.default_rng(seed)
    for split in ("valid", "test"):
        frame = pd.read_csv(src / f"predictions_{split}.csv")
        for task in TASKS:
            frame[f"prob_{task}"] = np.clip(frame[f"prob_{task}"] + rng.normal(0, noise, len(frame)), 0, 1)
        frame.to_csv(dst / f"predictions_{split}.csv", index=False)
        metrics[split] = score_predictions(frame, TASKS)
        y = frame[[f"label_{t}" for t in TASKS]].to_numpy(float)
        save_roc_pr_curves(y, frame[[f"prob_{t}" for t in TASKS]].to_numpy(float), TASKS, dst / f"curves_{split}")
    atomic_write_json(dst / "metrics.json", metrics)
    return dst


def _broken(src: Path, folder: Path) -> None:
    _copy_small(src, folder / "truncated_metrics")
    text = (folder / "truncated_metrics" / "metrics.json").read_text()
    (folder / "truncated_metrics" / "metrics.json").write_text(text[: len(text) // 2])
    (folder / "half_written").mkdir(parents=True)
    shutil.copy2(src / "config.yaml", folder / "half_written" / "config.yaml")
    (folder / "half_written" / "status.json").write_text(json.dumps({"state": "running", "time": 1.7e9}))
    (folder / "bad_config").mkdir()
    (folder / "bad_config" / "config.yaml").write_text("name: [unclosed\n  data: {")
    (folder / "bad_config" / "status.json").write_text(json.dumps({"state": "finished", "time": 1.7e9}))


def _study(bce: Path, out: Path, nih: Path) -> None:
    from cxrlab.tasks.scaling.run import collect_rows, write_results_csv
    from cxrlab.tasks.scaling.plan import run_key
    from cxrlab.report.cam_grid import cam_grid
    from cxrlab.report.scaling import write_report
    from cxrlab.utils import atomic_write_json

    rng = np.random.default_rng(0)
    grid = {"resnet10t": "resnet10t", "resnet18": "resnet18", "efficientnet_b0": "efficientnet"}
    for task in TASKS:
        for resolution in (32, 48, 64):
            for arch, group in grid.items():
                for seed in (0, 1):
                    key = run_key(task, arch, resolution, seed)
                    spec = {"key": key, "task": task, "resolution": resolution, "arch": arch, "arch_group": group,
                            "seed": seed, "effective_batch": 16, "micro_batch": 16, "accumulation": 1,
                            "oom_retries": 0, "fingerprint": "fixture"}
                    rows = collect_rows(spec, bce, run_seconds=1.0)
                    auc = 0.7 + resolution / 1000 + (arch == "resnet18") * 0.02 + rng.normal(0, 0.01)
                    for row in rows:
                        row.update(best_auroc=auc, best_auroc_ci_low=auc - 0.05, best_auroc_ci_high=auc + 0.05,
                                   run_dir=f"runs/{key}")
                    atomic_write_json(out / "results" / f"{key}.json", {"key": key, "rows": rows})
                    run = out / "runs" / key
                    run.mkdir(parents=True)
                    os.link(bce / "best_auroc.pt", run / "best_auroc.pt")
    _copy_small(bce, out / "runs" / run_key(TASKS[0], "resnet18", 64, 0))
    study = {"name": "scaling_demo", "mode": "binary", "resolutions": [32, 48, 64],
             "architectures": ["resnet10t", "resnet18", "efficientnet"], "seeds": [0, 1], "tasks": TASKS,
             "pairs": {"resnet": ["resnet10t", "resnet18"]}}
    (out / "study.yaml").write_text(yaml.safe_dump({"study": study}, sort_keys=False))
    atomic_write_json(out / "progress.json", {"total": 36, "done": 36, "failed": 0, "running": 0, "pending": 0})
    write_results_csv(out)
    write_report(out)
    cam_grid(out, nih / "BBox_List_2017.csv", nih / "images", out / "fig_cam_grid.png")


def _explain(bce: Path, root: Path, nih: Path) -> None:
    from cxrlab.explain.cam import explain_files
    from cxrlab.explain.localize import localize

    images = sorted((nih / "images").glob("*.png"))
    explain_files(bce / "best_auroc.pt", images[:2], root / "explain_bce")
    subset = nih / "subset"                       # localize the first few boxed images only (speed)
    subset.mkdir()
    for image in images[:6]:
        shutil.copy2(image, subset / image.name)
    localize(bce / "best_auroc.pt", nih / "BBox_List_2017.csv", subset, root / "localize_bce", n_boot=100)


def _segmentation(root: Path, siim: Path) -> None:
    from cxrlab.data.datasets import load_dataset
    from cxrlab.io import read_image
    from cxrlab.metrics.segmentation import get_stats, segmentation_summary
    from cxrlab.inference.pneumothorax import MaskPrediction, export_predictions
    from cxrlab.tasks.pneumothorax.evaluate import markdown_table, results_frame
    from cxrlab.utils import atomic_write_json

    dataset = load_dataset("siim", rle_csv=str(siim / "train-rle.csv"), root=str(siim))
    truths = np.stack([dataset.mask(i) for i in range(len(dataset))])
    predictions = []
    for i, row in dataset.table.reset_index(drop=True).iterrows():
        mask = np.roll(truths[i], shift=2 * (i % 4), axis=1)
        if i == 0:
            mask = np.zeros_like(mask)
            mask[5:15, 5:15] = True                 # a false-positive blob (Dice 0 or low)
        predictions.append(MaskPrediction(row["path"], row["image_id"], mask, read_image(row["path"]).pixels, 0.5))
    export_predictions(predictions, root / "seg_predict")

    rng = np.random.default_rng(0)
    cv = root / "pneumothorax_cv"
    frames, folds = [], []
    for fold in range(2):
        metrics = {"models": {}, "gate": {"auroc_valid": 0.8, "auroc_test": 0.75 + 0.05 * fold}, "splits": {}}
        for model in ("baseline", "cascade"):
            metrics["models"][model] = {}
            for k, row in enumerate(("argmax", "threshold", "tta", "triplet")):
                preds = np.stack([np.roll(t, int(rng.integers(0, 4 - k % 3)), axis=0) for t in truths])
                summaries = {s: segmentation_summary(*get_stats(preds, truths)[:3]) for s in ("valid", "test")}
                metrics["models"][model][row] = {"postprocess": {"method": row}, "valid_score": 0.5, **summaries}
        run = cv / f"fold{fold}"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump({"name": f"fold{fold}", "models": ["baseline", "cascade"],
                                                         "data": {"dataset": "siim", "size": 64},
                                                         "unet": {"encoder": "tu-resnet10t"}}))
        atomic_write_json(run / "status.json", {"state": "finished", "time": 1.7e9})
        atomic_write_json(run / "metrics.json", metrics)
        results_frame(metrics).to_csv(run / "results.csv", index=False)
        (run / "postprocess.json").write_text("{}")
        frames.append(results_frame(metrics, fold=fold))
        folds.append(str(run))
    table = pd.concat(frames, ignore_index=True)
    test = table[table["split"] == "test"]
    summary = (test.groupby(["model", "row", "metric"], sort=False)["value"]
               .agg(mean="mean", std=lambda v: float(np.std(v, ddof=0)), n_folds="count").reset_index())
    table.to_csv(cv / "cv_results.csv", index=False)
    summary.to_csv(cv / "cv_table.csv", index=False)
    (cv / "cv_table.md").write_text(markdown_table(test, title="2-fold cross-validation"))
    atomic_write_json(cv / "cv_metrics.json", {"folds": folds, "gate_auroc_test": [0.75, 0.8],
                                               "summary": summary.to_dict(orient="records")})


def _screening(bce: Path, run: Path) -> None:
    from cxrlab.metrics.classification import auroc
    from cxrlab.metrics.screening import risk_group_counts, screening_confusion, unseen_distribution
    from cxrlab.utils import atomic_write_json

    cfg = yaml.safe_load((bce / "config.yaml").read_text())
    table = pd.read_csv(cfg["data"]["options"]["csv"])
    paths = [str(Path(cfg["data"]["options"]["root"]) / p) for p in table["Path"][:40]]
    rng = np.random.default_rng(3)
    diseases, unseen = ["Effusion", "Cardiomegaly"], ["Edema"]
    point = {"threshold": 0.0, "target_sensitivity": 0.99, "sensitivity": 1.0, "specificity": 0.4,
             "platt_a": 1.5, "platt_b": 0.0, "n": 20}
    sets, confusion_rows, risk, unseen_tables = {}, [], [], []
    for name in ("internal", "external"):
        truth_d = (rng.random((len(paths), 2)) < 0.3).astype(float)
        truth = truth_d.max(axis=1)
        scores = truth * 1.5 + rng.normal(0, 1, len(paths))
        pred = (scores >= point["threshold"]).astype(float)
        classes = rng.integers(0, 3, (len(paths), 2))
        frame = pd.DataFrame({"path": paths, "abnormal_truth": truth, "svm_score": scores,
                              "abnormal_probability": 1 / (1 + np.exp(-1.5 * scores)),
                              "abnormal_pred": pred.astype(int)})
        for d, disease in enumerate(diseases):
            frame[f"truth/{disease}"] = truth_d[:, d]
            frame[f"class/{disease}"] = [("normal", "target", "others")[c] for c in classes[:, d]]
            for k, cls in enumerate(("normal", "target", "others")):
                frame[f"p_{cls}/{disease}"] = (classes[:, d] == k) * 0.8 + 0.1
        (run / "predictions").mkdir(parents=True, exist_ok=True)
        frame.to_csv(run / "predictions" / f"ensemble_{name}.csv", index=False)
        confusion = screening_confusion(truth, pred)
        confusion.update(auroc=auroc(truth, scores), accuracy=float((pred == truth).mean()))
        sets[name] = confusion
        confusion_rows.append({"variant": "ensemble", "set": name, **confusion})
        groups = {"critical": ["Effusion"], "cardiomegaly": ["Cardiomegaly"]}
        risk.append(risk_group_counts(pred, classes, truth_d, diseases, groups).rename_axis("ai").reset_index()
                    .assign(variant="ensemble", set=name))
        unseen_truth = (rng.random((len(paths), 1)) < 0.2).astype(float)
        unseen_tables.append(unseen_distribution(classes, unseen_truth, diseases, unseen).reset_index()
                             .assign(variant="ensemble", set=name))
    (run / "tables").mkdir()
    tables = {"table2_confusion": pd.DataFrame(confusion_rows), "table3_risk_groups": pd.concat(risk),
              "table9_unseen": pd.concat(unseen_tables),
              "ablations": pd.DataFrame([{"ablation": "baseline", "overrides": "", "accuracy": 0.7}]),
              "cost": pd.DataFrame([{"variant": "ensemble", "gflops_per_image": 1.2}])}
    for key, frame in tables.items():
        frame.to_csv(run / "tables" / f"{key}.csv", index=False)
    summary = {"operating_point": point, "sets": sets, "sensitivity": sets["internal"]["sensitivity"],
               "specificity": sets["internal"]["specificity"], "auroc": sets["internal"]["auroc"],
               "unseen_predicted_normal_rate": 0.3, "n_unseen": 8}
    atomic_write_json(run / "report.json", {
        "sensitivity": summary["sensitivity"], "specificity": summary["specificity"],
        "unseen_predicted_normal_rate": 0.3, "auroc": summary["auroc"], "primary_variant": "ensemble",
        "variants": {"ensemble": summary}, "tables": {k: str(run / "tables" / f"{k}.csv") for k in tables}})
    (run / "config.yaml").write_text(yaml.safe_dump({
        "name": "screening_demo", "data": {"dataset": "generic", "diseases": diseases, "unseen": unseen, "size": 32},
        "model": {"encoder": "test_resnet"}}))
    atomic_write_json(run / "status.json", {"state": "finished", "time": 1.7e9})


@pytest.fixture
def index(run_root) -> RunIndex:
    index = RunIndex(run_root)
    index.refresh()
    return index


# ----------------------------------------------------------------------------- the tests


def test_auroc_and_runs_frames_follow_the_run_files(index, run_root):
    frame = data.auroc_frame(index.records, "test")
    metrics = json.loads((run_root / "bce" / "metrics.json").read_text())["test"]["tasks"]
    bce = frame[frame["run"] == "bce"].set_index("task")
    assert sorted(bce.index) == sorted(TASKS)
    for task in TASKS:
        assert bce.loc[task, "auroc"] == pytest.approx(metrics[task]["auroc"])
        assert bce.loc[task, "ci_low"] == pytest.approx(metrics[task]["auroc_ci_low"])
        assert bce.loc[task, "auroc_ci"].startswith(f"{metrics[task]['auroc']:.3f} (")
    assert set(frame["run"]) == {"bce", "dam", "scaling_demo/runs/cardiomegaly-resnet18-64px-s0"}
    assert set(frame.loc[frame["run"] == "dam", "loss"]) == {"aucm"}
    runs = data.runs_frame(index.records).set_index("name")
    assert runs.loc["broken/bad_config", "state"] == "unreadable" and "config.yaml" in runs.loc["broken/bad_config",
                                                                                                "problem"]
    assert runs.loc["broken/truncated_metrics", "state"] == "unreadable"
    assert "metrics.json" in runs.loc["broken/truncated_metrics", "problem"]
    assert runs.loc["broken/half_written", "state"] == "running"
    assert data.filter_frame(frame, loss=["aucm"])["run"].unique().tolist() == ["dam"]
    assert len(data.filter_frame(frame, loss=[], arch=None)) == len(frame)


def test_paired_delong_against_the_reference(index, run_root):
    from sklearn.metrics import roc_auc_score

    from cxrlab.metrics.classification import delong_paired_test

    runs = [index.get("bce"), index.get("dam"), index.get("scaling_demo/runs/cardiomegaly-resnet18-64px-s0")]
    table = data.compare_aurocs(runs, "test", reference="bce").set_index(["task", "run"])
    ref = pd.read_csv(run_root / "bce" / "predictions_test.csv")
    other = pd.read_csv(run_root / "dam" / "predictions_test.csv")
    for task in TASKS:
        keep = ref[f"label_{task}"].notna()
        y = ref.loc[keep, f"label_{task}"].to_numpy()
        a, b = ref.loc[keep, f"prob_{task}"].to_numpy(), other.loc[keep, f"prob_{task}"].to_numpy()
        _, _, z, p = delong_paired_test(y, a, b)
        row = table.loc[(task, "dam")]
        assert row["p_value"] == pytest.approx(p) and row["z"] == pytest.approx(-z)
        assert row["delta"] == pytest.approx(roc_auc_score(y, b) - roc_auc_score(y, a))
        assert row["n_paired"] == keep.sum()
        same = table.loc[(task, "scaling_demo/runs/cardiomegaly-resnet18-64px-s0")]
        assert same["p_value"] == 1.0 and same["delta"] == 0.0
        assert table.loc[(task, "bce"), "note"] == "reference"


def test_curves_from_json_or_recomputed_from_predictions(index, tmp_path):
    stored = data.load_curves(index.get("bce"), "test")
    copy = tmp_path / "copy"
    _copy_small(index.get("bce").path, copy)
    fresh = RunIndex(tmp_path)
    fresh.refresh()
    recomputed = data.load_curves(fresh.get("copy"), "test")
    for task in TASKS:
        assert recomputed[task]["auroc"] == pytest.approx(stored[task]["auroc"])
        assert recomputed[task]["roc"]["tpr"] == pytest.approx(stored[task]["roc"]["tpr"])


def test_scaling_tables_read_the_report_or_compute_it(run_root, tmp_path):
    from cxrlab.report.scaling import load_results, summary_by_resolution

    tables = data.scaling_tables(run_root / "scaling_demo")
    results = load_results(run_root / "scaling_demo")
    expected = summary_by_resolution(results)
    assert len(tables["results"]) == 36 and tables["problems"].empty
    assert np.allclose(tables["summary"]["mean"], expected["mean"]) and len(tables["summary"]) == 6
    delta = tables["delta"]
    assert set(delta["family"]) == {"resnet"} and delta["is_best"].sum() == 2     # one best per task
    stats = results.groupby(["task", "resolution", "arch"])["best_auroc"].mean()
    row = delta.iloc[0]
    assert row["delta_mean"] == pytest.approx(stats[(row["task"], row["resolution"], "resnet18")]
                                              - stats[(row["task"], row["resolution"], "resnet10t")])
    assert set(tables["efficientnet"]["arch"]) == {"efficientnet_b0"}
    stale = tmp_path / "study"
    shutil.copytree(run_root / "scaling_demo", stale, ignore=shutil.ignore_patterns("runs", "*.png"))
    (stale / "results.csv").touch()
    os.utime(stale / "summary_by_resolution.csv", (1, 1))          # older than results.csv: recomputed
    recomputed = data.scaling_tables(stale)
    assert np.allclose(recomputed["summary"]["mean"], expected["mean"])


def test_cam_grid_rows_are_map_resolutions(run_root, tmp_path):
    table = data.explanation_table([run_root / "explain_bce"])
    assert set(table["resolution"]) == {32} and set(table["label"]) == set(TASKS)
    assert all(Path(p).is_file() for p in table["overlay_path"])
    bigger = tmp_path / "explain_48"
    shutil.copytree(run_root / "explain_bce", bigger)
    for path in bigger.glob("*__gradcam.npy"):
        np.save(path, np.zeros((48, 48), dtype=np.float32))
    both = data.explanation_table([run_root / "explain_bce", bigger])
    grid = data.cam_grid(both, table["image_name"].iloc[0])
    assert list(grid.index) == [32, 48] and sorted(grid.columns) == sorted(TASKS)
    assert str(bigger) in grid.loc[48, TASKS[0]] and str(run_root) in grid.loc[32, TASKS[0]]


def test_localization_tables(run_root):
    tables = data.localization_tables(run_root / "localize_bce")
    summary, per_image = tables["summary"], tables["per_image"]
    assert set(summary["class"]) <= set(TASKS) and len(summary) >= 1
    assert (summary["pointing_ci_low"] <= summary["pointing_hit_rate"] + 1e-9).all()
    assert len(per_image) == summary["n"].sum()
    assert per_image["overlay_path"].notna().all() and all(Path(p).is_file() for p in per_image["overlay_path"])


def test_table51_layout_matches_the_pipeline_markdown(run_root):
    tables = data.segmentation_tables(run_root / "pneumothorax_cv")
    table = tables["table"].set_index("Post-processing")
    assert list(table.index) == ["ArgMax", "Raw threshold", "TTA", "TTA + triplet"]
    markdown = (run_root / "pneumothorax_cv" / "cv_table.md").read_text().splitlines()
    header = [c.strip() for c in markdown[2].strip("|").split("|")]
    for line in markdown[4:8]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        for column, cell in zip(header[1:], cells[1:]):
            assert table.loc[cells[0], column] == cell
    single = data.segmentation_tables(run_root / "pneumothorax_cv" / "fold0")
    assert single["split"]["split"].iloc[0] == "test" and len(single["table"]) == 4


def test_per_image_dice_worst_first_and_overlay(run_root):
    from cxrlab.io import read_mask
    from cxrlab.io.rle import masks_union, read_rle_csv

    dice = data.per_image_dice(run_root / "seg_predict")
    assert len(dice) == 16 and dice["dice"].is_monotonic_increasing
    rles = read_rle_csv(dice.attrs["rle_csv"])
    for row in dice.itertuples():
        pred = read_mask(row.mask_path)
        truth = masks_union(rles[row.image_id], pred.shape[1], pred.shape[0])
        total = pred.sum() + truth.sum()
        assert row.dice == pytest.approx(1.0 if total == 0 else 2 * (pred & truth).sum() / total)
    worst = dice.iloc[0]
    views = data.mask_overlay(worst["path"], worst["mask_path"], dice.attrs["rle_csv"], worst["image_id"])
    assert views["overlay"].shape == views["image"].shape + (3,) and views["overlay"].dtype == np.uint8
    only_pred = views["pred"] & ~views["truth"]
    assert only_pred.any() and (views["overlay"][only_pred][:, 0] > views["overlay"][only_pred][:, 1]).all()


def test_screening_tables_and_operating_point(run_root):
    tables = data.screening_tables(run_root / "screening_demo")
    points = tables["operating_points"].set_index("set")
    assert set(points.index) == {"internal", "external"}
    confusion = tables["table2_confusion"]
    for _, row in confusion.iterrows():
        matrix = data.confusion_matrix(row)
        assert matrix.to_numpy().sum() == row["n"]
        assert matrix.loc["AI abnormal", "reference abnormal"] / matrix["reference abnormal"].sum() == pytest.approx(
            points.loc[row["set"], "sensitivity"])
    assert {"ai", "critical", "cardiomegaly"} <= set(tables["table3_risk_groups"].columns)
    with pytest.raises(Exception, match="report.json"):
        data.screening_tables(run_root / "bce")


def test_run_images_join_the_runs_predictions(index, run_root):
    images = data.run_images(index.get("bce"), "test")
    split = json.loads((run_root / "bce" / "split.json").read_text())["test"]
    assert len(images) == split["n_images"] and images["study_id"].nunique() == split["n_studies"]
    preds = pd.read_csv(run_root / "bce" / "predictions_test.csv").set_index("study_id")
    row = images.iloc[0]
    assert row["prob_Cardiomegaly"] == pytest.approx(preds.loc[row["study_id"], "prob_Cardiomegaly"])
    assert Path(row["path"]).is_file()
    screening = data.run_images(index.get("screening_demo"))
    assert len(screening) == 80 and {"abnormal_probability", "source"} <= set(screening.columns)


def test_window_level_on_the_real_dicom(rg1_dir):
    from cxrlab.io import read_image

    pixels = read_image(rg1_dir / "RG1_UNCR.dcm").pixels
    center, width = data.default_window(pixels)
    shown = data.window_image(pixels, center, width)
    assert shown.dtype == np.uint8 and shown.shape == pixels.shape and shown.std() > 20
    low, high = np.percentile(pixels, [0.5, 99.5])
    assert (shown[pixels <= low] == 0).all() and (shown[pixels >= high] == 255).all()
    narrow = data.window_image(pixels, center, width / 4)
    assert (narrow == 0).mean() > (shown == 0).mean()          # a narrower window clips more
    assert data.window_image(np.array([0.0, 50.0, 100.0]), 50, 100).tolist() == [0, 128, 255]
