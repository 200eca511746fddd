"""Recipes: YAML + overrides into frozen dataclasses, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cxrlab.config import ExperimentConfig, config_from_dict, load_config, save_config
from cxrlab.errors import ConfigError, MissingFileError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_follow_seed_001():
    cfg = ExperimentConfig()
    first, second = cfg.train.phases
    assert first.freeze_body and first.epochs == 1 and first.lr == 5e-3
    assert (second.epochs, second.lr_body, second.lr_head) == (5, 2.5e-5, 2.5e-3)
    assert cfg.model.dropout == 0.6 and cfg.data.batch_size == 40


def test_overrides_reach_nested_keys_and_list_items():
    cfg = config_from_dict({}, ["model.arch=resnet50", "data.size=480", "seed=3",
                                "train.phases.1.epochs=2", "data.tasks=[Edema]"])
    assert cfg.model.arch == "resnet50" and cfg.data.size == 480 and cfg.seed == 3
    assert cfg.train.phases[1].epochs == 2 and cfg.data.tasks == ("Edema",)


@pytest.mark.parametrize("override, message", [
    ("model.archh=resnet50", "unknown key"),
    ("data.size=big", "integer"),
    ("train.phases.7.epochs=1", "no list item"),
    ("seed", "key.path=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({}, [override])


def _recipe_kind(path: Path) -> str:
    """Which loader a shipped YAML belongs to, from its top-level keys."""
    keys = set(yaml.safe_load(path.read_text()) or {})
    if "study" in keys:
        return "study"
    if "unet" in keys:
        return "pneumothorax"
    if "svm" in keys:
        return "screening"
    if "survival" in keys:
        return "brats"
    if path.name.startswith(("mrnet", "demo_mrnet")):
        return "mrnet"
    return "classification"


SHIPPED = sorted(CONFIGS.glob("*.yaml"))


@pytest.mark.parametrize("path", [p for p in SHIPPED if _recipe_kind(p) == "classification"], ids=lambda p: p.name)
def test_every_shipped_recipe_loads_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("path", [p for p in SHIPPED if _recipe_kind(p) != "classification"], ids=lambda p: p.name)
def test_every_other_shipped_recipe_loads_with_its_own_loader(path, tmp_path):
    kind = _recipe_kind(path)
    if kind == "study":
        from cxrlab.config.study import load_study
        assert load_study(path).name
    elif kind == "pneumothorax":
        from cxrlab.config.pneumothorax import load_pneumothorax_config
        assert load_pneumothorax_config(path).name
    elif kind == "brats":
        from cxrlab.config.brats import load_brats_config, save_brats_config
        cfg = load_brats_config(path)
        save_brats_config(cfg, tmp_path / "config.yaml")
        assert load_brats_config(tmp_path / "config.yaml") == cfg
    elif kind == "mrnet":
        from cxrlab.config.mrnet import load_mrnet_config
        assert load_mrnet_config(path).name
    else:
        from cxrlab.config.screening import load_screening_config, save_screening_config
        cfg = load_screening_config(path)
        save_screening_config(cfg, tmp_path / "config.yaml")
        assert load_screening_config(tmp_path / "config.yaml") == cfg


def test_missing_recipe_is_named(tmp_path):
    with pytest.raises(MissingFileError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_relative_data_paths_resolve_against_the_recipe(tmp_path):
    (tmp_path / "r.yaml").write_text("data:\n  options: {csv: sub/train.csv, root: sub}\n")
    cfg = load_config(tmp_path / "r.yaml")
    assert cfg.data.options["csv"] == str((tmp_path / "sub" / "train.csv").resolve())


@pytest.mark.parametrize("override, message", [
    ("train.optimizer=adamm", "'adamm' is not one of .*did you mean 'adam'"),
    ("train.schedule=onecylce", "did you mean 'onecycle'"),
    ("data.normalization=imagenett", "did you mean 'imagenet'"),
    ("train.optimiser=adam", "unknown key.*did you mean 'optimizer' for 'optimiser'"),
])
def test_choices_are_checked_when_the_recipe_loads(override, message):
    """A misspelt choice fails at load time (before any cache is built), naming the nearest."""
    from cxrlab.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        config_from_dict({}, [override])


def test_renamed_keys_name_their_new_key():
    import dataclasses

    from cxrlab.config.base import build
    from cxrlab.errors import ConfigError

    @dataclasses.dataclass(frozen=True)
    class Section:
        RENAMED_KEYS = {"lr_max": "lr"}
        lr: float = 0.1

    with pytest.raises(ConfigError, match="'lr_max' is now 'lr'"):
        build(Section, {"lr_max": 0.2}, "train")
