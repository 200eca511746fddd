"""Scaling studies: grid expansion, batch plan, resumable execution (fake and real training)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from cxrlab.errors import ConfigError
from cxrlab.models.registry import EFFICIENTNET_FOR_RESOLUTION
from cxrlab.tasks.scaling.run import run_study
from cxrlab.config.study import BatchRule, load_study, study_from_dict
from cxrlab.tasks.scaling.plan import expand_grid

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _study(recipe: dict, **study) -> dict:
    grid = {"name": "t", "resolutions": [32, 48], "architectures": ["resnet10t"], "seeds": [0],
            "tasks": ["Cardiomegaly"], "batch": {"effective": 16}}
    grid.update(study)
    return {"study": grid, "recipe": recipe}


# --------------------------------------------------------------------------- grid + batch


def test_seed001_grid_pairs_each_resolution_with_its_efficientnet(tmp_path):
    study = load_study(CONFIGS / "scaling_seed001.yaml")
    specs = expand_grid(study, tmp_path)
    assert len(specs) == 5 * 5 * 5 * 5
    assert len({s.key for s in specs}) == len(specs)
    effnets = {s.resolution: s.arch for s in specs if s.arch_group == "efficientnet"}
    assert effnets == {160: "efficientnet_b0", 240: "efficientnet_b1", 320: "efficientnet_b3",
                       400: "efficientnet_b4", 480: "efficientnet_b5"} == EFFICIENTNET_FOR_RESOLUTION
    for spec in specs:
        assert spec.effective_batch == 40 == spec.config["data"]["batch_size"]
        assert spec.micro_batch * spec.accumulation == 40
        assert spec.config["data"]["micro_batch"] == spec.micro_batch
        assert spec.config["data"]["size"] == spec.resolution and spec.config["model"]["arch"] == spec.arch
        assert spec.config["data"]["tasks"] == [spec.task] and spec.config["name"] == spec.key
    # Bigger images get smaller forward passes, never a different effective batch.
    plan = {(s.arch, s.resolution): s.micro_batch for s in specs}
    assert plan[("resnet50", 160)] == 40 and plan[("resnet50", 480)] == 20
    assert plan[("densenet161", 480)] < plan[("densenet161", 160)]
    # Seeds are the outer loop: the whole first seed comes first.
    assert [s.seed for s in specs[:125]] == [0] * 125


def test_batch_rule_rounds_to_a_divisor_and_prefers_the_most_specific_entry():
    rule = BatchRule(effective=40, max_micro=32, pixel_budget=4.7,
                     table={"densenet161@480": 6, "densenet161": 20, "@400": 10})
    assert rule.micro_batch("resnet50", 160) == 20          # cap 32 -> largest divisor of 40 <= 32
    assert rule.micro_batch("resnet50", 480) == 20          # 4.7e6 / 480**2 = 20.4
    assert rule.micro_batch("densenet161", 480) == 5        # table 6 -> divisor 5
    assert rule.micro_batch("densenet161", 240) == 20       # arch entry
    assert rule.micro_batch("resnet50", 400) == 10          # "@400"
    assert rule.micro_batch("efficientnet_b5", 480, group="efficientnet") == 20
    by_group = BatchRule(effective=40, table={"efficientnet@480": 8})
    assert by_group.micro_batch("efficientnet_b5", 480, "efficientnet") == 8
    assert rule.smaller(20) == 10 and rule.smaller(5) == 4 and rule.smaller(1) is None
    per_arch = BatchRule(effective=32, pixel_budget={"default": 1.0, "big": 0.25})
    assert per_arch.micro_batch("small", 128) == 32 and per_arch.micro_batch("big", 128) == 8
    with pytest.raises(ConfigError):
        BatchRule(effective=0)


def test_multilabel_mode_and_bad_grids(tmp_path, tiny_recipe):
    recipe = tiny_recipe(tmp_path / "runs")
    study = study_from_dict(_study(recipe, mode="multilabel", tasks=["Cardiomegaly", "Pleural Effusion"],
                                   architectures=["resnet10t", "resnet18"]), tmp_path)
    specs = expand_grid(study, tmp_path / "out")
    assert len(specs) == 4 and all(s.task == "multilabel" for s in specs)
    assert specs[0].config["data"]["tasks"] == ["Cardiomegaly", "Pleural Effusion"]
    with pytest.raises(ConfigError, match="sizes"):
        study_from_dict(_study(recipe, architectures=["efficientnet"]), tmp_path)   # 32 px has no pair
    with pytest.raises(ConfigError, match="share the key"):
        expand_grid(study_from_dict(_study(recipe, architectures=["resnet10t", "resnet10t"]), tmp_path), tmp_path)
    with pytest.raises(ConfigError, match="unknown key"):
        study_from_dict(_study(recipe, epochs=3), tmp_path)
    overridden = study_from_dict(_study(recipe), tmp_path, ["study.seeds=[3, 4]", "train.weight_decay=0.5"])
    assert overridden.seeds == (3, 4) and overridden.recipe.train.weight_decay == 0.5


# ------------------------------------------------------------------- execution (fake train)


class _FakeTrainer:
    """Stands in for cxrlab.tasks.classification.train.train: writes the files a finished run has."""

    def __init__(self, fail_keys=(), oom_above=None):
        self.calls: list[str] = []
        self.fail_keys = set(fail_keys)
        self.oom_above = oom_above

    def __call__(self, cfg, resume=False, progress=True, epoch_hook=None):
        self.calls.append(cfg.name)
        run_dir = Path(cfg.output.root) / cfg.name
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
        if self.oom_above and cfg.data.micro_batch > self.oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if cfg.name in self.fail_keys:
            (run_dir / "status.json").write_text(json.dumps({"state": "failed"}))
            raise RuntimeError("loss is NaN")
        auroc = 0.5 + cfg.data.size / 1000 + cfg.seed / 100
        (run_dir / "metrics.json").write_text(json.dumps(
            {"valid": {"tasks": {t: {"auroc": auroc, "auroc_ci_low": auroc - 0.1, "auroc_ci_high": auroc + 0.1}
                                 for t in cfg.data.tasks}}}))
        (run_dir / "best.json").write_text(json.dumps({"auroc": {"value": auroc, "phase": 1, "epoch": 0}}))
        (run_dir / "split.json").write_text(json.dumps({"train": {"n_images": 100}}))
        pd.DataFrame({"phase": [0, 1], "epoch": [0, 0], "seconds": [1.0, 1.5]}).to_csv(run_dir / "history.csv",
                                                                                      index=False)
        (run_dir / "checkpoints" / "phase0").mkdir(parents=True, exist_ok=True)
        (run_dir / "checkpoints" / "phase0" / "last.ckpt").write_bytes(b"resume state")
        (run_dir / "status.json").write_text(json.dumps({"state": "finished"}))
        return run_dir


@pytest.fixture
def fake(monkeypatch):
    def install(**kwargs):
        trainer = _FakeTrainer(**kwargs)
        monkeypatch.setattr("cxrlab.tasks.scaling.run.train", trainer)
        monkeypatch.setattr("cxrlab.tasks.scaling.run.prepare_data", lambda cfg, cache_root=None: None)
        return trainer

    return install


def _fake_study(tmp_path, **study):
    recipe = {"data": {"dataset": "chexpert", "options": {"csv": "x.csv"}}, "model": {"pretrained": None},
              "train": {"phases": [{"epochs": 1}, {"epochs": 2}]}, "output": {"mlflow": False}}
    grid = {"resolutions": [64, 96], "architectures": ["resnet10t", "resnet18"], "seeds": [0, 1],
            "tasks": ["Cardiomegaly", "Edema"], "batch": {"effective": 32, "max_micro": 16}}
    grid.update(study)
    return study_from_dict({"study": grid, "recipe": recipe}, tmp_path)


def test_failed_runs_are_recorded_and_rerun_finished_ones_skipped(tmp_path, fake):
    study = _fake_study(tmp_path)
    bad = "edema-resnet18-96px-s1"
    trainer = fake(fail_keys=[bad])
    events = []
    summary = run_study(study, tmp_path / "out", progress=lambda p: events.append((p.done, p.failed, p.pending)))
    assert summary.total == 16 and summary.finished == 15 and list(summary.failed) == [bad]
    assert "loss is NaN" in json.loads((tmp_path / "out" / "failures" / f"{bad}.json").read_text())["error"]
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert len(results) == 15 and results["key"].is_unique and bad not in set(results["key"])
    row = results[results["key"] == "cardiomegaly-resnet18-96px-s1"].iloc[0]
    assert row["best_auroc"] == pytest.approx(0.5 + 0.096 + 0.01)
    assert (row["best_epoch"], row["effective_batch"], row["micro_batch"], row["accumulation"]) == (2, 32, 16, 2)
    assert row["images_per_second"] == pytest.approx(100 * 3 / 2.5)
    assert events[-1] == (15, 1, 0)
    progress = json.loads((tmp_path / "out" / "progress.json").read_text())
    assert progress["done"] == 15 and progress["failed"] == 1

    trainer = fake()                               # the fault is gone: only the failed run reruns
    summary = run_study(study, tmp_path / "out")
    assert trainer.calls == [bad] and summary.skipped == 15 and summary.finished == 1 and not summary.failed
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert len(results) == 16 and results["key"].is_unique
    assert not (tmp_path / "out" / "failures" / f"{bad}.json").exists()
    # Finished runs keep their best checkpoints' files but not Lightning's resume state.
    assert not list((tmp_path / "out" / "runs").glob("*/checkpoints"))


def test_keep_checkpoints_keeps_the_resume_state(tmp_path, fake):
    fake()
    study = _fake_study(tmp_path, resolutions=[64], architectures=["resnet18"], seeds=[0], tasks=["Edema"],
                        keep_checkpoints=True)
    run_study(study, tmp_path / "out")
    assert (tmp_path / "out" / "runs" / "edema-resnet18-64px-s0" / "checkpoints" / "phase0" / "last.ckpt").is_file()


def test_out_of_memory_retries_with_a_smaller_micro_batch(tmp_path, fake):
    study = _fake_study(tmp_path, resolutions=[64], architectures=["resnet18"], seeds=[0], tasks=["Edema"])
    trainer = fake(oom_above=4)
    run_study(study, tmp_path / "out")
    assert len(trainer.calls) == 3                 # 16 -> 8 -> 4
    row = pd.read_csv(tmp_path / "out" / "results.csv").iloc[0]
    assert (row["micro_batch"], row["accumulation"], row["oom_retries"], row["effective_batch"]) == (4, 8, 2, 32)


def test_a_changed_recipe_is_refused_unless_asked_to_rerun(tmp_path, fake):
    import dataclasses

    fake()
    study = _fake_study(tmp_path, seeds=[0], tasks=["Edema"])
    run_study(study, tmp_path / "out")
    train = dataclasses.replace(study.recipe.train, weight_decay=0.3)
    changed = dataclasses.replace(study, recipe=dataclasses.replace(study.recipe, train=train))
    with pytest.raises(ConfigError, match="another recipe"):
        run_study(changed, tmp_path / "out")
    trainer = fake()
    summary = run_study(changed, tmp_path / "out", rerun_changed=True)
    assert summary.finished == 4 and len(trainer.calls) == 4
    # Another micro-batch budget is not a recipe change: nothing reruns.
    relaxed = dataclasses.replace(changed, batch=BatchRule(effective=32, max_micro=8))
    assert run_study(relaxed, tmp_path / "out").skipped == 4


# ------------------------------------------------------------------ execution (real train)


class Interrupted(BaseException):
    """Stands for the study process being stopped (not a failure of one run)."""


def test_interrupted_phantom_study_yields_each_result_exactly_once(tmp_path, tiny_recipe):
    recipe = tiny_recipe(tmp_path / "unused", **{"data.tasks": ["Cardiomegaly"], "data.size": 32})
    recipe["train"]["phases"] = [{"epochs": 2, "lr": 3e-3}]
    recipe["train"]["limit_train_batches"] = 4         # 4 micro-batches = 2 optimizer steps per epoch
    recipe["data"]["split"] = {"train": 0.8, "valid": 0.2}
    study = study_from_dict(_study(recipe, batch={"effective": 16, "max_micro": 8}), tmp_path)
    out = tmp_path / "study"
    seen = []

    def stop_second_run(phase, epoch):
        seen.append((phase, epoch))
        if seen.count((0, 1)) == 2:                # the second run, after its first epoch
            raise Interrupted()

    with pytest.raises(Interrupted):
        run_study(study, out, epoch_hook=stop_second_run)
    first, second = "cardiomegaly-resnet10t-32px-s0", "cardiomegaly-resnet10t-48px-s0"
    assert sorted(p.stem for p in (out / "results").glob("*.json")) == [first]
    # As if the process had been killed outright: the run was left "running".
    status = out / "runs" / second / "status.json"
    status.write_text(json.dumps({"state": "running"}))
    first_result = (out / "results" / f"{first}.json").read_text()

    summary = run_study(study, out)
    assert (summary.skipped, summary.finished, summary.failed) == (1, 1, {})
    assert (out / "results" / f"{first}.json").read_text() == first_result
    results = pd.read_csv(out / "results.csv")
    assert list(results["key"]) == [first, second]
    assert results["micro_batch"].tolist() == [8, 8] and results["accumulation"].tolist() == [2, 2]
    assert results["best_auroc"].between(0, 1).all() and results["best_epoch"].isin([1, 2]).all()
    history = pd.read_csv(out / "runs" / second / "history.csv")
    assert history["epoch"].tolist() == [0, 1]     # resumed, not restarted or duplicated
    assert json.loads(status.read_text())["state"] == "finished"
    assert run_study(study, out).skipped == 2      # a third call has nothing to do
    assert len(pd.read_csv(out / "results.csv")) == 2


def test_the_fingerprint_ignores_how_a_run_is_fed_but_not_what_it_learns(tiny_recipe, tmp_path):
    from cxrlab.tasks.scaling.plan import recipe_fingerprint

    base = tiny_recipe(tmp_path)
    same = [tiny_recipe(tmp_path, **{key: value}) for key, value in
            (("data.num_workers", 8), ("data.micro_batch", 8), ("data.normalize_on", "device"),
             ("name", "other"))]
    assert {recipe_fingerprint(r) for r in same} == {recipe_fingerprint(base)}
    assert recipe_fingerprint(tiny_recipe(tmp_path, **{"data.size": 64})) != recipe_fingerprint(base)
    assert recipe_fingerprint(tiny_recipe(tmp_path, **{"data.normalization": "xrv"})) != recipe_fingerprint(base)
