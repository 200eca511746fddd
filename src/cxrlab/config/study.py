"""The scaling-study file (seed 001): grid of resolutions x architectures x seeds, batch rule,
model pairs compared in the report, phantoms for a CPU demo."""

from __future__ import annotations
import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from cxrlab.config import (
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    read_recipe,
    resolve_paths,
)
from cxrlab.errors import ConfigError
import logging

log = logging.getLogger(__name__)


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
