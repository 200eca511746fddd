"""The run index: kinds, nesting, unreadable runs, the (path, mtime) cache, and speed on 600 runs."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
import yaml

from cxrlab.dashboard.index import RunIndex, detect_kind, open_index

SMALL_FILES = ("config.yaml", "split.json", "status.json", "best.json", "history.csv", "metrics.json",
               "predictions_valid.csv", "predictions_test.csv")


@pytest.mark.parametrize(("files", "dirs", "kind"), [
    ({"results.csv", "study.yaml", "progress.json"}, {"runs", "results"}, "study"),
    ({"cv_table.csv", "cv_metrics.json"}, {"fold0", "fold1"}, "segmentation_cv"),
    ({"config.yaml", "postprocess.json", "metrics.json"}, {"baseline", "one_case", "gate"}, "segmentation"),
    ({"config.yaml", "report.json", "status.json"}, {"tables", "ensemble", "predictions"}, "screening"),
    ({"explanations.csv"}, set(), "explanation"),
    ({"localization_summary.csv", "localization_per_image.csv"}, {"overlays"}, "localization"),
    ({"predictions.csv"}, {"masks", "overlays"}, "seg_predictions"),
    ({"config.yaml", "status.json", "metrics.json"}, {"curves_test"}, "classification"),
    ({"status.json"}, set(), "classification"),
    ({"metrics.json", "README.md"}, {"data", "bce"}, None),     # the demo's output folder: not a run itself
    (set(), set(), None),
])
def test_kind_from_file_names(files, dirs, kind):
    assert detect_kind(files, dirs) == kind


def test_index_of_the_fixture_root(run_root):
    index = RunIndex(run_root)
    records = {r.name: r for r in index.refresh()}
    kinds = {name: r.kind for name, r in records.items()}
    assert kinds["bce"] == "classification" and kinds["scaling_demo"] == "study"
    assert kinds["pneumothorax_cv"] == "segmentation_cv" and kinds["pneumothorax_cv/fold0"] == "segmentation"
    assert kinds["screening_demo"] == "screening" and kinds["seg_predict"] == "seg_predictions"
    assert kinds["explain_bce"] == "explanation" and kinds["localize_bce"] == "localization"
    assert not any(name.startswith(("cache", "bce/")) for name in records)          # caches and run sub-folders
    nested = records["scaling_demo/runs/cardiomegaly-resnet18-64px-s0"]
    assert nested.parent == "scaling_demo" and nested.kind == "classification"
    assert records["pneumothorax_cv/fold1"].parent == "pneumothorax_cv"
    bce = records["bce"]
    metrics = json.loads((run_root / "bce" / "metrics.json").read_text())
    config = yaml.safe_load((run_root / "bce" / "config.yaml").read_text())
    assert bce.state == "finished" and bce.arch == config["model"]["arch"] and bce.resolution == 32
    assert bce.loss == "bce" and bce.seed == config["seed"] and bce.dataset == "chexpert"
    assert bce.mean_auroc["test"] == pytest.approx(metrics["test"]["mean_auroc"])
    assert records["scaling_demo"].info["n_results"] == 36 and records["scaling_demo"].info["has_cam_grid"]
    assert records["screening_demo"].info["sensitivity"] is not None
    assert records["seg_predict"].info["n_images"] == 16
    assert records["broken/bad_config"].state == "unreadable"
    assert records["broken/truncated_metrics"].state == "unreadable"


def test_unreadable_and_half_written_runs_never_raise(tmp_path):
    (tmp_path / "list_metrics").mkdir()
    (tmp_path / "list_metrics" / "config.yaml").write_text("name: x\ndata: {size: 64}\n")
    (tmp_path / "list_metrics" / "metrics.json").write_text("[1, 2]")
    (tmp_path / "scalar_config").mkdir()
    (tmp_path / "scalar_config" / "config.yaml").write_text("just a string\n")
    (tmp_path / "no_metrics").mkdir()
    (tmp_path / "no_metrics" / "config.yaml").write_text("name: y\nmodel: {arch: resnet18}\n")
    (tmp_path / "no_metrics" / "status.json").write_text(json.dumps({"state": "finished", "time": 1.0}))
    (tmp_path / "failed").mkdir()
    (tmp_path / "failed" / "status.json").write_text(json.dumps({"state": "failed", "error": "RuntimeError: boom"}))
    (tmp_path / "bad_size").mkdir()
    (tmp_path / "bad_size" / "config.yaml").write_text("data: {size: big}\n")
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "study.yaml").write_text("study: [")
    (tmp_path / "study" / "results.csv").write_text("task,resolution\n")
    records = {r.name: r for r in RunIndex(tmp_path).refresh()}
    assert records["list_metrics"].state == "unreadable" and "metrics.json" in records["list_metrics"].problem
    assert records["scalar_config"].state == "unreadable" and "config.yaml" in records["scalar_config"].problem
    assert records["no_metrics"].state == "incomplete" and records["no_metrics"].problem == "no metrics.json"
    assert records["failed"].state == "failed" and "boom" in records["failed"].problem
    assert records["bad_size"].state == "unreadable"
    assert records["study"].state == "unreadable" and "study.yaml" in records["study"].problem
    assert RunIndex(tmp_path / "missing").refresh() == []


def test_cache_rereads_only_changed_runs(run_root, tmp_path):
    for name in ("a", "b", "c"):
        shutil.copytree(run_root / "bce", tmp_path / name, ignore=shutil.ignore_patterns("*.pt", "checkpoints"))
    index = RunIndex(tmp_path)
    first = {r.name: r for r in index.refresh()}
    assert index.reads == 3
    again = {r.name: r for r in index.refresh()}
    assert index.reads == 3 and all(again[n] is first[n] for n in first)
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    metrics["test"]["mean_auroc"] = 0.999
    tmp = tmp_path / "b" / ".metrics.json.tmp"
    tmp.write_text(json.dumps(metrics))
    os.replace(tmp, tmp_path / "b" / "metrics.json")          # how cxrlab writes: atomically
    refreshed = {r.name: r for r in index.refresh()}
    assert index.reads == 4 and refreshed["b"].mean_auroc["test"] == 0.999 and refreshed["a"] is first["a"]
    shutil.rmtree(tmp_path / "c")
    assert [r.name for r in index.refresh()] == ["a", "b"]
    assert index.refresh(max_age=60) == index.records and open_index(tmp_path) is open_index(str(tmp_path))


def test_600_runs_index_fast(run_root, tmp_path):
    template = run_root / "bce"
    for k in range(600):
        run = tmp_path / f"study/runs/run{k:03d}"
        run.mkdir(parents=True)
        for name in SMALL_FILES:
            os.link(template / name, run / name)
    (tmp_path / "study" / "runs" / "run000" / "metrics.json").unlink()
    (tmp_path / "study" / "runs" / "run000" / "metrics.json").write_text("{")
    index = RunIndex(tmp_path)
    started = time.perf_counter()
    records = index.refresh()
    cold = time.perf_counter() - started
    started = time.perf_counter()
    index.refresh()
    warm = time.perf_counter() - started
    assert len(records) == 600 and sum(r.state == "unreadable" for r in records) == 1
    assert cold < 3.0 and warm < 1.0 and index.reads == 600


def test_on_disk_copy_lets_a_new_process_skip_unchanged_runs(run_root, tmp_path):
    root = tmp_path / "root"
    for name in ("a", "b"):
        shutil.copytree(run_root / "bce", root / name, ignore=shutil.ignore_patterns("*.pt", "checkpoints"))
    first = RunIndex(root, cache_dir=tmp_path / "cache")
    before = {r.name: r for r in first.refresh()}
    assert first.reads == 2 and first.cache_file.is_file()
    second = RunIndex(root, cache_dir=tmp_path / "cache")                 # as a new dashboard process would
    after = {r.name: r for r in second.refresh()}
    assert second.reads == 0 and after.keys() == before.keys()
    assert after["a"].aurocs == before["a"].aurocs and after["a"].tasks == before["a"].tasks
    (root / "b" / "status.json").write_text(json.dumps({"state": "failed", "error": "stopped"}))
    third = RunIndex(root, cache_dir=tmp_path / "cache")
    assert {r.name: r.state for r in third.refresh()} == {"a": "finished", "b": "failed"} and third.reads == 1
    third.cache_file.write_text("{not json")
    fourth = RunIndex(root, cache_dir=tmp_path / "cache")
    assert len(fourth.refresh()) == 2 and fourth.reads == 2                # a corrupt copy is ignored


def test_mlflow_artifact_copies_are_not_listed_twice(tmp_path):
    """The local MLflow store keeps a copy of each run's files under <root>/mlartifacts."""
    status = json.dumps({"state": "finished", "time": 1.0})
    for folder in (tmp_path / "bce", tmp_path / "mlartifacts" / "0a1b" / "artifacts"):
        folder.mkdir(parents=True)
        (folder / "status.json").write_text(status)
    assert [r.name for r in RunIndex(tmp_path).refresh()] == ["bce"]


def test_runs_declared_in_run_json_get_their_kind(tmp_path):
    """MRNet and BraTS runs (declared in run.json) are indexed as their own kinds, never mistaken
    for classification runs; a BraTS run without metrics.json is incomplete."""
    from cxrlab.dashboard.index import open_index
    from cxrlab.runs.rundir import claim_run_directory

    for kind in ("brats", "mrnet"):
        run = claim_run_directory(tmp_path / "runs" / f"{kind}_demo", kind=kind)
        (run / "config.yaml").write_text(f"name: {kind}_demo\n")
        (run / "status.json").write_text('{"state": "finished"}')
    records = open_index(tmp_path / "runs").refresh()
    assert [(r.name, r.kind) for r in records] == [("brats_demo", "brats"), ("mrnet_demo", "mrnet")]
    assert records[0].state == "incomplete"
