"""A scaling study's plan: the study file, the batch rule and the grid of runs (seed 001).

:func:`load_study` reads a study file (format in :mod:`cxrlab.tasks.scaling.run`),
:class:`BatchRule` decides the images per forward pass at each resolution, and
:func:`expand_grid` turns the study into one :class:`RunSpec` per run, each with its key,
resolved classification recipe and fingerprint. Nothing here trains or touches the output
folder beyond reading the recipe; :mod:`cxrlab.tasks.scaling.run` runs the plan.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrlab.config import (
    config_from_dict,
)
from cxrlab.config.study import EFFICIENTNET_GROUP, StudyConfig
from cxrlab.errors import ConfigError
from cxrlab.models.registry import efficientnet_for_resolution

# ------------------------------------------------------------------------------ batch rule


# ----------------------------------------------------------------------------- the study


# -------------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class RunSpec:
    """One run of the grid.

    Attributes:
        key: Stable identifier and run-directory name.
        task: The task (binary mode) or ``"multilabel"``.
        tasks: The tasks the model is trained on.
        arch: The architecture trained (``efficientnet_b3``, not ``efficientnet``).
        arch_group: The grid's architecture entry (``efficientnet`` for paired variants).
        micro_batch, accumulation: Images per forward pass and passes per step.
        fingerprint: Hash of the recipe (minus output paths, workers and micro-batch);
            a finished run whose fingerprint differs from the study's is refused.
        config: The run's recipe as a plain dict (picklable; sent to workers).
    """

    key: str
    task: str
    tasks: tuple[str, ...]
    resolution: int
    arch: str
    arch_group: str
    seed: int
    effective_batch: int
    micro_batch: int
    accumulation: int
    fingerprint: str
    config: dict[str, Any]

    def plan_row(self) -> dict[str, Any]:
        return {"key": self.key, "task": self.task, "resolution": self.resolution, "arch": self.arch,
                "arch_group": self.arch_group, "seed": self.seed, "effective_batch": self.effective_batch,
                "micro_batch": self.micro_batch, "accumulation": self.accumulation,
                "fingerprint": self.fingerprint}


def slug(text: str) -> str:
    """``Pleural Effusion`` -> ``pleural_effusion`` (keys and file names)."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def run_key(task: str, arch: str, resolution: int, seed: int) -> str:
    return f"{slug(task)}-{arch}-{resolution}px-s{seed}"


def recipe_fingerprint(config: Mapping[str, Any]) -> str:
    """Hash of what determines a run's result (not where it is written or how batched)."""
    data = json.loads(json.dumps(config))
    data.pop("output", None)
    data.pop("name", None)
    data["data"].pop("num_workers", None)
    data["data"].pop("micro_batch", None)
    data["data"].pop("normalize_on", None)  # where images are normalized: same values
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def run_config(study: StudyConfig, runs_root: Path, key: str, tasks: Sequence[str], arch: str,
               resolution: int, seed: int, micro: int) -> dict[str, Any]:
    """The recipe of one run as a plain dict (validated by :func:`config_from_dict`)."""
    cfg = study.recipe.to_dict()
    cfg["name"] = key
    cfg["seed"] = int(seed)
    cfg["data"].update(size=int(resolution), tasks=list(tasks), batch_size=study.batch.effective,
                       micro_batch=int(micro))
    cfg["model"]["arch"] = arch
    cfg["output"]["root"] = str(runs_root)
    config_from_dict(cfg)
    return cfg


def expand_grid(study: StudyConfig, out_dir: str | Path) -> list[RunSpec]:
    """Every run of the study, seeds outermost (a full first seed finishes first).

    Raises:
        ConfigError: Two grid cells give the same key (an architecture listed twice).
    """
    runs_root = Path(out_dir).resolve() / "runs"
    specs: list[RunSpec] = []
    task_groups = ([(t, (t,)) for t in study.tasks] if study.mode == "binary"
                   else [("multilabel", tuple(study.tasks))])
    for seed in study.seeds:
        for resolution in study.resolutions:
            for group in study.architectures:
                arch = efficientnet_for_resolution(resolution) if group == EFFICIENTNET_GROUP else group
                micro = study.batch.micro_batch(arch, resolution, group)
                for task, tasks in task_groups:
                    key = run_key(task, arch, resolution, seed)
                    config = run_config(study, runs_root, key, tasks, arch, resolution, seed, micro)
                    specs.append(RunSpec(key, task, tasks, resolution, arch, group, seed,
                                         study.batch.effective, micro, study.batch.effective // micro,
                                         recipe_fingerprint(config), config))
    keys = [s.key for s in specs]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ConfigError("study.architectures", f"grid cells share the key(s) {dupes}; list each "
                                                 "architecture once")
    return specs
