"""The README's seed-001 steps on a phantom replica: train.csv + valid.csv, explicit and
auto caches, a moved data folder, up-front recipe checks (issue 17, items 1, 2 and 4)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxrlab.cli.main import app
from cxrlab.config import config_from_dict
from cxrlab.errors import CacheError, ConfigError, ImageReadError, MissingFileError

runner = CliRunner()


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    from cxrlab.data.synthetic_layouts import write_dataset

    return write_dataset("chexpert", tmp_path_factory.mktemp("ph") / "set", n=32, size=64,
                         seed=4, valid_fraction=0.25)


@pytest.fixture()
def data_dir(phantoms, tmp_path) -> Path:
    return Path(shutil.copytree(phantoms, tmp_path / "data"))


def recipe(data: Path, runs: Path, **data_overrides):
    small = data / "CheXpert-v1.0-small"
    return config_from_dict({
        "name": "seed001_cell",
        "data": {"dataset": "chexpert",
                 "options": {"csv": str(small / "train.csv"), "root": str(data)},
                 "valid_options": {"csv": str(small / "valid.csv"), "root": str(data)},
                 "tasks": ["Cardiomegaly", "Edema"], "split": {"train": 1.0}, "size": 32,
                 "channels": 1, "normalization": "unit", "num_workers": 0, **data_overrides},
        "model": {"arch": "test_resnet", "pretrained": None},
        "train": {"phases": [{"epochs": 1, "lr": 1e-3}], "accelerator": "cpu"},
        "output": {"root": str(runs), "mlflow": False},
    })


def build_cache_cli(data: Path, out: Path, *extra: str):
    small = data / "CheXpert-v1.0-small"
    return runner.invoke(app, ["data", "cache", "--dataset", "chexpert", "--csv",
                               str(small / "train.csv"), "--root", str(data), "--size", "32",
                               "--out", str(out), "--workers", "1", "--no-progress", *extra])


def test_explicit_and_auto_cache_with_valid_csv_and_moved_data(data_dir, tmp_path):
    from cxrlab.tasks.classification.data import prepare_data

    runs = tmp_path / "runs"
    explicit = runs / "cache" / "chexpert-train-32"
    result = build_cache_cli(data_dir, explicit)
    assert result.exit_code == 0, result.output
    n_train = len(prepare_data(recipe(data_dir, runs, cache="none")).splits["train"].indices)

    # 1. explicit cache + valid.csv beside train.csv: each set has its own cache
    prepared = prepare_data(recipe(data_dir, runs, cache=str(explicit)))
    train_cache, valid_cache = (prepared.splits[s].cache for s in ("train", "valid"))
    assert train_cache.path == explicit and len(train_cache) == n_train
    assert valid_cache.path != explicit
    assert len(valid_cache) == len(prepared.splits["valid"].dataset)

    # 2. `cache: auto` finds both by content, also after the data folder moved
    store = sorted(p.name for p in (runs / "cache").iterdir())
    moved = tmp_path / "moved"
    os.rename(data_dir, moved)
    for root in (moved,):
        auto = prepare_data(recipe(root, runs, cache="auto"))
        assert auto.splits["train"].cache.path == explicit
        assert auto.splits["valid"].cache.path == valid_cache.path
    assert sorted(p.name for p in (runs / "cache").iterdir()) == store  # nothing rebuilt


def test_recipe_checked_before_any_cache_or_run_folder(data_dir, tmp_path):
    from cxrlab.tasks.classification.train import train

    runs = tmp_path / "runs"
    (data_dir / "CheXpert-v1.0-small" / "valid.csv").unlink()
    cfg = recipe(data_dir, runs, cache="auto")
    with pytest.raises(MissingFileError, match=r"data.valid_options.csv: file .*valid.csv "
                                               r"does not exist"):
        train(cfg)
    assert not runs.exists()  # no cache built, no run folder claimed
    bad = config_from_dict({**cfg.to_dict(), "model": {**cfg.to_dict()["model"],
                                                       "pretrained": str(tmp_path / "w.pth")}})
    with pytest.raises(MissingFileError, match="model.pretrained: weights file"):
        train(bad)
    with pytest.raises(ConfigError, match="data.normalization: 'zscore' is not one of"):   # at load time
        recipe(data_dir, runs, normalization="zscore")
    with pytest.raises(ConfigError, match="data.micro_batch"):
        train(recipe(data_dir, runs, batch_size=10, micro_batch=4))
    assert not runs.exists()


def test_failed_start_leaves_nothing_that_blocks_a_rerun(data_dir, tmp_path):
    from cxrlab.tasks.classification.train import run_directory, train
    from cxrlab.tasks.classification.preflight import check_recipe

    runs = tmp_path / "runs"
    cfg = recipe(data_dir, runs, cache="auto")
    victim = sorted((data_dir / "CheXpert-v1.0-small" / "train").rglob("*.jpg"))[3]
    payload = victim.read_bytes()
    victim.write_bytes(b"not a jpeg")
    with pytest.raises(ImageReadError, match=victim.name):
        train(cfg)
    assert not run_directory(cfg).exists()
    assert [p for p in (runs / "cache").iterdir()] == []  # the failed build left nothing
    victim.write_bytes(payload)
    check_recipe(cfg)  # the same command may run again


def test_frontal_only_recipe_with_an_all_views_cache_names_the_cause(data_dir, tmp_path):
    import pandas as pd

    from cxrlab.tasks.classification.data import prepare_data

    csv = data_dir / "CheXpert-v1.0-small" / "train.csv"
    table = pd.read_csv(csv)
    table.loc[[0, 5], "Frontal/Lateral"] = "Lateral"
    table.to_csv(csv, index=False)
    explicit = tmp_path / "runs" / "cache" / "all-views"
    assert build_cache_cli(data_dir, explicit).exit_code == 0
    with pytest.raises(CacheError, match="recipe keeps frontal views only; the cache was built "
                                         "with all views"):
        prepare_data(recipe(data_dir, tmp_path / "runs", cache=str(explicit),
                            frontal_only=True))
