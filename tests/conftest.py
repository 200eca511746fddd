"""Shared fixtures: the real files installed packages ship, and temporary folders."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from cxrlab.config import config_from_dict


def _package_dir(name: str) -> Path:
    """A package's folder without importing it (torchxrayvision imports torch: seconds)."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        pytest.skip(f"{name} is not installed")
    return Path(spec.origin).parent


def _xrv_data_dir() -> Path:
    return _package_dir("torchxrayvision") / "data"


def _pydicom_data_dir() -> Path:
    return _package_dir("data_store") / "data"


@pytest.fixture(scope="session")
def xrv_data() -> Path:
    """torchxrayvision's ``data/`` folder (CheXpert, SIIM, NIH, VinDr, PadChest label files)."""
    return _xrv_data_dir()


@pytest.fixture(scope="session")
def rg1_dir() -> Path:
    """pydicom-data's folder holding ``RG1_UNCR.dcm`` and ``RG1_J2KR.dcm``."""
    return _pydicom_data_dir()


@pytest.fixture(scope="session")
def phantom_chexpert(tmp_path_factory) -> Path:
    """A CheXpert-layout phantom set (480 images, 128 px, as the demo); the folder above CheXpert-v1.0-small."""
    from cxrlab.data.synthetic_layouts import write_dataset

    out = tmp_path_factory.mktemp("phantoms") / "chexpert"
    write_dataset("chexpert", out, n=480, size=128, seed=0)
    return out


def _tiny_recipe(data_dir: Path, root: Path, **overrides) -> dict:
    """A small CPU recipe over the phantom set (plain dict, so tests can change it)."""
    recipe = {
        "name": "tiny",
        "seed": 0,
        "data": {
            "dataset": "chexpert",
            "options": {"csv": str(data_dir / "CheXpert-v1.0-small" / "train.csv"), "root": str(data_dir)},
            "tasks": ["Cardiomegaly", "Pleural Effusion"],
            "frontal_only": True,
            "split": {"train": 0.7, "valid": 0.15, "test": 0.15},
            "size": 48,
            "channels": 1,
            "normalization": "unit",
            "augment": False,
            "batch_size": 32,
            "num_workers": 0,
        },
        "model": {"arch": "test_resnet", "head": "concat", "dropout": 0.1, "pretrained": None},
        "train": {
            "phases": [{"epochs": 1, "freeze_body": True, "lr": 3e-3}, {"epochs": 2, "lr_body": 2e-3, "lr_head": 3e-3}],
            "optimizer": "adamw",
            "weight_decay": 0.01,
            "accelerator": "cpu",
            "devices": 1,
            "deterministic": True,
            "limit_train_batches": 4,
        },
        "output": {"root": str(root), "mlflow": False},
    }
    for dotted, value in overrides.items():
        node = recipe
        keys = dotted.split(".")
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return recipe


@pytest.fixture
def make_recipe(phantom_chexpert, tmp_path):
    def build(**overrides):
        return config_from_dict(_tiny_recipe(phantom_chexpert, tmp_path / "runs", **overrides))

    return build


@pytest.fixture
def tiny_recipe(phantom_chexpert):
    """``tiny_recipe(root, **overrides)`` -> the small recipe as a plain dict."""

    def build(root: Path, **overrides) -> dict:
        return _tiny_recipe(phantom_chexpert, root, **overrides)

    return build
