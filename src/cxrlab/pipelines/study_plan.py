"""A scaling study's plan: the study file, the batch rule and the grid of runs (seed 001).

:func:`load_study` reads a study file (format in :mod:`cxrlab.pipelines.scaling`),
:class:`BatchRule` decides the images per forward pass at each resolution, and
:func:`expand_grid` turns the study into one :class:`RunSpec` per run, each with its key,
resolved classification recipe and fingerprint. Nothing here trains or touches the output
folder beyond reading the recipe; :mod:`cxrlab.pipelines.scaling` runs the plan.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrlab.config import (ExperimentConfig, apply_overrides, config_from_dict, load_config, read_recipe,
                           resolve_paths)
from cxrlab.errors import ConfigError

STUDY_MODES = ("binary", "multilabel")
EFFICIENTNET_GROUP = "efficientnet"
DEFAULT_PAIRS: dict[str, tuple[str, str]] = {
    "resnet": ("resnet50", "resnet152"),
    "densenet": ("densenet121", "densenet161"),
}
"""Seed 001 eqs 4.3-4.6: (smaller, larger) architecture of each model family."""

RESULT_COLUMNS = (
    "key", "task", "resolution", "arch", "arch_group", "seed", "best_auroc", "best_auroc_ci_low",
    "best_auroc_ci_high", "best_epoch", "best_phase", "effective_batch", "micro_batch",
    "accumulation", "oom_retries", "n_train_images", "epochs", "train_seconds", "run_seconds",
    "images_per_second", "finished_at", "run_dir", "fingerprint",
)


# ------------------------------------------------------------------------------ batch rule


def _divisor_at_most(n: int, limit: int) -> int:
    """The largest divisor of ``n`` that is at most ``limit`` (at least 1)."""
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


@dataclass(frozen=True)
class BatchRule:
    """How many images go through one forward pass, per architecture and resolution.

    The micro-batch is the smallest of ``effective``, ``max_micro``, the ``table`` entry
    and what ``pixel_budget`` allows, rounded down to a divisor of ``effective`` (so the
    accumulation count is a whole number).

    Attributes:
        effective: Images per optimizer step, the same at every resolution (seed 001: 40).
        max_micro: Cap on images per forward pass everywhere; None = no cap.
        pixel_budget: Megapixels per forward pass (``micro <= budget * 1e6 / size**2``);
            a number, or a mapping from architecture (or ``default``) to a number.
        table: Micro-batch by ``"arch@size"``, ``"arch"`` or ``"@size"`` (the most specific
            entry wins; ``efficientnet@480`` also matches the paired variant).
    """

    effective: int = 40
    max_micro: int | None = None
    pixel_budget: float | Mapping[str, float] | None = None
    table: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.effective < 1:
            raise ConfigError("study.batch.effective", f"must be at least 1, got {self.effective}")
        if self.max_micro is not None and self.max_micro < 1:
            raise ConfigError("study.batch.max_micro", f"must be at least 1, got {self.max_micro}")
        for name, value in dict(self.table).items():
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"study.batch.table.{name}", f"must be a positive integer, got {value!r}")

    def _budget(self, arch: str, group: str) -> float | None:
        if isinstance(self.pixel_budget, Mapping):
            for name in (arch, group, "default"):
                if name in self.pixel_budget:
                    return float(self.pixel_budget[name])
            return None
        return None if self.pixel_budget is None else float(self.pixel_budget)

    def micro_batch(self, arch: str, resolution: int, group: str | None = None) -> int:
        """Images per forward pass for ``arch`` at ``resolution`` (a divisor of ``effective``)."""
        group = group or arch
        limits = [self.effective]
        if self.max_micro is not None:
            limits.append(self.max_micro)
        for name in (f"{arch}@{resolution}", f"{group}@{resolution}", arch, group, f"@{resolution}"):
            if name in self.table:
                limits.append(int(self.table[name]))
                break
        budget = self._budget(arch, group)
        if budget is not None:
            limits.append(max(1, int(budget * 1e6 // (resolution * resolution))))
        return _divisor_at_most(self.effective, min(limits))

    def smaller(self, micro: int) -> int | None:
        """The next smaller admissible micro-batch (after an out-of-memory error), or None."""
        return _divisor_at_most(self.effective, micro - 1) if micro > 1 else None


# ----------------------------------------------------------------------------- the study


@dataclass(frozen=True)
class StudyConfig:
    """A scaling study: a base recipe and the grid around it (see the module docstring)."""

    name: str
    recipe: ExperimentConfig
    resolutions: tuple[int, ...]
    architectures: tuple[str, ...]
    seeds: tuple[int, ...]
    tasks: tuple[str, ...]
    mode: str = "binary"
    batch: BatchRule = field(default_factory=BatchRule)
    pairs: Mapping[str, tuple[str, str]] = field(default_factory=lambda: dict(DEFAULT_PAIRS))
    phantoms: Mapping[str, Any] | None = None
    keep_checkpoints: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The study as written to ``OUT/study.yaml`` (inline recipe)."""
        grid = json.loads(json.dumps(dataclasses.asdict(self), default=str))
        return {"study": grid, "recipe": grid.pop("recipe")}


_STUDY_KEYS = {"name", "mode", "resolutions", "architectures", "seeds", "tasks", "batch", "pairs", "phantoms",
               "keep_checkpoints"}


def _as_tuple(value: Any, where: str, kind: type) -> tuple:
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise ConfigError(where, "must not be empty")
    if kind is int and any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise ConfigError(where, f"expected integers, got {list(values)!r}")
    return tuple(kind(v) for v in values)


def study_from_dict(raw: Mapping[str, Any], base_dir: str | Path = ".",
                    overrides: Sequence[str] = ()) -> StudyConfig:
    """Build a :class:`StudyConfig` from a parsed study file.

    Args:
        raw: The mapping with ``study``, ``recipe`` and optional ``overrides``.
        base_dir: Folder that relative recipe and data paths are resolved against.
        overrides: ``study.KEY=VALUE`` items change the grid; any other ``KEY=VALUE``
            is a recipe override (``train.phases.1.epochs=1``).

    Raises:
        ConfigError: Unknown keys, bad values, an EfficientNet without a paired size.
    """
    raw = json.loads(json.dumps(dict(raw)))
    study_overrides = [o for o in overrides if o.startswith("study.")]
    recipe_overrides = [str(o) for o in raw.get("overrides") or []]
    recipe_overrides += [o for o in overrides if not o.startswith("study.")]
    apply_overrides(raw, study_overrides)
    unknown = sorted(set(raw) - {"study", "recipe", "overrides"})
    if unknown:
        raise ConfigError("study file", f"unknown top-level key(s) {unknown}; expected study, recipe, overrides")
    study = raw.get("study") or {}
    if not isinstance(study, Mapping):
        raise ConfigError("study", "must be a mapping")
    bad = sorted(set(study) - _STUDY_KEYS)
    if bad:
        raise ConfigError("study", f"unknown key(s) {bad}; known: {sorted(_STUDY_KEYS)}")
    base_dir = Path(base_dir)
    recipe = raw.get("recipe")
    if isinstance(recipe, str):
        path = Path(recipe) if Path(recipe).is_absolute() else base_dir / recipe
        cfg = load_config(path, recipe_overrides)
    elif isinstance(recipe, Mapping):
        cfg = resolve_paths(config_from_dict(recipe, recipe_overrides), base_dir)
    else:
        raise ConfigError("recipe", "give a recipe file path or an inline recipe mapping")
    mode = str(study.get("mode", "binary"))
    if mode not in STUDY_MODES:
        raise ConfigError("study.mode", f"must be one of {STUDY_MODES}, got {mode!r}")
    batch_raw = study.get("batch") or {}
    if not isinstance(batch_raw, Mapping):
        raise ConfigError("study.batch", "must be a mapping")
    unknown_batch = sorted(set(batch_raw) - {"effective", "max_micro", "pixel_budget", "table"})
    if unknown_batch:
        raise ConfigError("study.batch", f"unknown key(s) {unknown_batch}")
    batch = BatchRule(effective=int(batch_raw.get("effective", cfg.data.batch_size)),
                      max_micro=batch_raw.get("max_micro"), pixel_budget=batch_raw.get("pixel_budget"),
                      table=dict(batch_raw.get("table") or {}))
    pairs_raw = study.get("pairs") or DEFAULT_PAIRS
    pairs = {}
    for family, members in dict(pairs_raw).items():
        members = _as_tuple(members, f"study.pairs.{family}", str)
        if len(members) != 2:
            raise ConfigError(f"study.pairs.{family}", f"needs [smaller, larger], got {list(members)}")
        pairs[str(family)] = (members[0], members[1])
    tasks = _as_tuple(study.get("tasks", list(cfg.data.tasks)), "study.tasks", str)
    out = StudyConfig(
        name=str(study.get("name", cfg.name)), recipe=cfg,
        resolutions=_as_tuple(study.get("resolutions", [cfg.data.size]), "study.resolutions", int),
        architectures=_as_tuple(study.get("architectures", [cfg.model.arch]), "study.architectures", str),
        seeds=_as_tuple(study.get("seeds", [cfg.seed]), "study.seeds", int), tasks=tasks, mode=mode,
        batch=batch, pairs=pairs, phantoms=study.get("phantoms") or None,
        keep_checkpoints=bool(study.get("keep_checkpoints", False)),
    )
    if EFFICIENTNET_GROUP in out.architectures:
        from cxrlab.models.registry import efficientnet_for_resolution

        for size in out.resolutions:
            efficientnet_for_resolution(size)
    return out


def load_study(path: str | Path, overrides: Sequence[str] = ()) -> StudyConfig:
    """Read a study YAML file (relative paths resolve against its folder)."""
    def build(raw: dict[str, Any]) -> StudyConfig:
        if "study" not in raw:
            raise ConfigError(None, "a study file is a mapping with 'study' and 'recipe' sections")
        return study_from_dict(raw, Path(path).parent, overrides)

    return read_recipe(path, build, "study file")


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
    from cxrlab.models.registry import efficientnet_for_resolution

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
