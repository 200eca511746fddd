"""Recipes: one YAML file per experiment, read into frozen dataclasses.

:mod:`cxrlab.config.base` holds the machinery (build, overrides, choices checked at load, the
:class:`~cxrlab.config.base.Recipe` mixin); each task's recipe lives in a module of its own
(:mod:`~cxrlab.config.classification`, :mod:`~cxrlab.config.pneumothorax`,
:mod:`~cxrlab.config.screening`). The classification recipe, the oldest, is re-exported here.
"""

from __future__ import annotations

from cxrlab.config.base import (
                                Recipe,
                                apply_overrides,
                                build,
                                coerce,
                                look_up_option,
                                parse_scalar,
                                read_recipe,
                                resolve_options,
)
from cxrlab.config.classification import (
                                CHEXPERT_COMPETITION_TASKS,
                                DataConfig,
                                ExperimentConfig,
                                ModelConfig,
                                OutputConfig,
                                PhaseConfig,
                                TrainConfig,
                                config_from_dict,
                                load_config,
                                phase_value,
                                resolve_paths,
                                save_config,
)

__all__ = ["Recipe", "apply_overrides", "build", "coerce", "look_up_option", "parse_scalar", "read_recipe",
           "resolve_options", "CHEXPERT_COMPETITION_TASKS", "DataConfig", "ExperimentConfig", "ModelConfig",
           "OutputConfig", "PhaseConfig", "TrainConfig", "config_from_dict", "load_config", "phase_value",
           "resolve_paths", "save_config"]
