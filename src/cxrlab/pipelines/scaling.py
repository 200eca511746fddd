"""Resolution and model-scaling studies (seed 001): expand the grid, run it, resumably.

A study file names a base recipe and the grid::

    study:
      name: seed001
      mode: binary                  # one model per task (seed 001) or multilabel
      resolutions: [160, 240, 320, 400, 480]
      architectures: [resnet50, resnet152, densenet121, densenet161, efficientnet]
      seeds: [0, 1, 2, 3, 4]
      tasks: [Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion]
      batch: {effective: 40, max_micro: 40, pixel_budget: null, table: {}}
      pairs: {resnet: [resnet50, resnet152], densenet: [densenet121, densenet161]}
      phantoms: null                # or {n: 240, size: 96, seed: 0, box_images: 48}
      keep_checkpoints: false       # delete a finished run's Lightning checkpoints
    recipe: chexpert_seed001.yaml   # path (relative to this file) or an inline recipe
    overrides: [train.precision=bf16-mixed]

``efficientnet`` in ``architectures`` stands for the variant seed 001 paired with each
resolution (Table 3.2, :data:`cxrlab.models.registry.EFFICIENTNET_FOR_RESOLUTION`).

Every run keeps ``batch.effective`` images per optimizer step at every resolution; the
images per forward pass (``data.micro_batch``) come from :class:`BatchRule` and the
difference is made up by gradient accumulation (``cxrlab.pipelines.classify_data``).
A GPU out-of-memory error retries the run with the next smaller micro-batch. The batch
actually used is recorded in ``results.csv``.

Output folder ``OUT``::

    OUT/study.yaml              the study as run (resolved recipe included)
    OUT/plan.csv                every run of the grid with its batch plan
    OUT/runs/<key>/             each run's directory (cxrlab.pipelines.classify.train)
    OUT/runs/cache/             resolution caches, one per image size
    OUT/results/<key>.json      one file per finished run, written atomically
    OUT/failures/<key>.json     the last error of a run that failed (removed on success)
    OUT/results.csv             rebuilt from results/ after every finished run
    OUT/progress.json           done / running / failed / pending and ETA

A run is identified by its key (``<task>-<arch>-<size>px-s<seed>``). Re-running the same
study skips runs with a result file, resumes runs that were interrupted or failed (from
their last epoch checkpoint), and never duplicates a result: ``results.csv`` holds one
row per key (per key and task in multilabel mode).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from cxrlab.config import (ExperimentConfig, apply_overrides, config_from_dict, load_config, read_recipe,
                           resolve_paths)
from cxrlab.errors import ConfigError
from cxrlab.utils import atomic_write_json, atomic_write_text

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


# ---------------------------------------------------------------------- one run (worker)


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (serialises cache builds across processes)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def execute_run(payload: Mapping[str, Any],
                epoch_hook: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Train (or resume, or just collect) one run; returns its result rows.

    Runs in a worker (process pool or Ray). Unless the driver built them, the resolution
    cache is opened or built under a file lock so parallel runs at one size build it once.
    On a GPU out-of-memory error the run restarts with the next smaller micro-batch (same
    effective batch).

    Args:
        payload: ``{"spec": RunSpec.plan_row(), "config": dict, "effective": int,
            "prepared": bool, "keep_checkpoints": bool}`` (``prepared``: the driver already
            built the caches; without ``keep_checkpoints`` the finished run's
            ``checkpoints/`` folder is deleted).
        epoch_hook: Passed to :func:`cxrlab.pipelines.classify.train` (tests).
    """
    from cxrlab.pipelines.classify import read_status, train
    from cxrlab.pipelines.classify_data import prepare_data

    spec = dict(payload["spec"])
    config = json.loads(json.dumps(payload["config"]))
    rule = BatchRule(effective=int(payload["effective"]))
    started = time.time()
    retries = 0
    while True:
        cfg = config_from_dict(config)
        run_dir = Path(cfg.output.root) / cfg.name
        status = read_status(run_dir)
        if status.get("state") == "finished" and (run_dir / "metrics.json").is_file():
            break
        if not payload.get("prepared"):
            with _file_lock(Path(cfg.output.root) / "cache" / f".prepare-{cfg.data.size}.lock"):
                prepare_data(cfg)
        try:
            train(cfg, resume=True, progress=False, epoch_hook=epoch_hook)
            break
        except RuntimeError as err:
            smaller = rule.smaller(int(config["data"]["micro_batch"])) if _is_oom(err) else None
            if smaller is None:
                raise
            log.warning("%s: out of memory with micro-batch %s; retrying with %d",
                        cfg.name, config["data"]["micro_batch"], smaller)
            shutil.rmtree(run_dir, ignore_errors=True)
            config["data"]["micro_batch"] = smaller
            retries += 1
    if not payload.get("keep_checkpoints"):
        # Resume state of a finished run (Lightning checkpoints with optimizer state:
        # ~0.3-2 GB a run); best_auroc.pt / best_loss.pt stay.
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    micro = int(config["data"]["micro_batch"])
    spec.update(micro_batch=micro, accumulation=rule.effective // micro, oom_retries=retries)
    return {"rows": collect_rows(spec, run_dir, time.time() - started)}


def collect_rows(spec: Mapping[str, Any], run_dir: Path, run_seconds: float) -> list[dict[str, Any]]:
    """Result rows of a finished run from the files it wrote (one per task).

    ``best_auroc`` is the validation AUROC (study level, DeLong CI) of the checkpoint
    with the best validation AUROC; ``best_epoch`` counts epochs across phases from 1.
    """
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    best = json.loads((run_dir / "best.json").read_text())["auroc"]
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    phases = cfg["train"]["phases"]
    best_epoch = sum(int(p["epochs"]) for p in phases[: int(best.get("phase", 0))]) + int(best.get("epoch", 0)) + 1
    epochs = sum(int(p["epochs"]) for p in phases)
    split = json.loads((run_dir / "split.json").read_text()) if (run_dir / "split.json").is_file() else {}
    n_train = int(split.get("train", {}).get("n_images", 0))
    train_seconds = float("nan")
    if (run_dir / "history.csv").is_file():
        history = pd.read_csv(run_dir / "history.csv")
        train_seconds = float(history["seconds"].sum()) if "seconds" in history else float("nan")
    limit = cfg["train"].get("limit_train_batches")
    micro = int(cfg["data"]["micro_batch"] or cfg["data"]["batch_size"])
    per_epoch = min(n_train, int(limit) * micro) if limit else n_train
    rate = per_epoch * epochs / train_seconds if train_seconds and train_seconds > 0 else float("nan")
    tasks = metrics.get("valid", {}).get("tasks", {})
    names = [spec["task"]] if spec["task"] in tasks else list(tasks)
    rows = []
    for name in names:
        report = tasks.get(name, {})
        rows.append({
            **dict(spec), "task": name, "best_auroc": report.get("auroc", best.get("value")),
            "best_auroc_ci_low": report.get("auroc_ci_low"), "best_auroc_ci_high": report.get("auroc_ci_high"),
            "best_epoch": best_epoch, "best_phase": int(best.get("phase", 0)), "n_train_images": n_train,
            "epochs": epochs, "train_seconds": round(train_seconds, 3), "run_seconds": round(run_seconds, 3),
            "images_per_second": round(rate, 2), "finished_at": time.time(),
            "run_dir": f"runs/{run_dir.name}",
        })
    return rows


# ---------------------------------------------------------------------- the study (driver)


@dataclass
class StudyProgress:
    """Counts shown while a study runs (also written to ``OUT/progress.json``)."""

    total: int
    skipped: int
    done: int = 0
    running: int = 0
    failed: int = 0
    elapsed: float = 0.0
    eta_seconds: float | None = None
    last: str = ""

    @property
    def pending(self) -> int:
        return self.total - self.skipped - self.done - self.running - self.failed


@dataclass
class StudySummary:
    """What :func:`run_study` did; ``failed`` maps keys to their error."""

    out_dir: Path
    total: int
    skipped: int
    finished: int
    failed: dict[str, str]
    results_csv: Path


def prepare_phantoms(study: StudyConfig, out_dir: str | Path) -> StudyConfig:
    """Write the study's phantom data (``study.phantoms``) once and point the recipe at it.

    ``phantoms: {n, size, seed, box_images}`` writes a CheXpert-layout training set to
    ``OUT/phantoms/chexpert`` and, with ``box_images > 0``, an NIH-layout set with boxes
    on every finding (``OUT/phantoms/nih``: ``BBox_List_2017.csv`` + ``images/``) for
    localization. Without ``phantoms`` the study is returned unchanged.
    """
    if not study.phantoms:
        return study
    from cxrlab.data.synthetic_layouts import write_dataset

    spec = dict(study.phantoms)
    unknown = sorted(set(spec) - {"n", "size", "seed", "box_images", "prevalence"})
    if unknown:
        raise ConfigError("study.phantoms", f"unknown key(s) {unknown}; known: n, size, seed, box_images, "
                                            "prevalence")
    root = Path(out_dir).resolve() / "phantoms"
    n, size, seed = int(spec.get("n", 240)), int(spec.get("size", 96)), int(spec.get("seed", 0))
    train_dir = root / "chexpert"
    if not (train_dir / "CheXpert-v1.0-small" / "train.csv").is_file():
        write_dataset("chexpert", train_dir, n=n, size=size, seed=seed, overwrite=True,
                      prevalence=spec.get("prevalence"))
    boxes = int(spec.get("box_images", 0))
    if boxes and not (root / "nih" / "BBox_List_2017.csv").is_file():
        write_dataset("nih", root / "nih", n=boxes, size=size, seed=seed + 1, overwrite=True,
                      prevalence=0.5, bbox_fraction=1.0)
    options = {"csv": str(train_dir / "CheXpert-v1.0-small" / "train.csv"), "root": str(train_dir)}
    data = dataclasses.replace(study.recipe.data, dataset="chexpert", options=options, valid_options={})
    return dataclasses.replace(study, recipe=dataclasses.replace(study.recipe, data=data))


@contextmanager
def _study_lock(out: Path) -> Iterator[None]:
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".study.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise ConfigError(out, "another `cxrlab study scaling` is running on this folder") from err
        handle.seek(0)
        handle.truncate()
        handle.write(f"{socket.gethostname()} {os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_result(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def read_results(out_dir: str | Path) -> pd.DataFrame:
    """All finished runs' rows (from ``OUT/results/*.json``), one per key and task."""
    rows = []
    for path in sorted((Path(out_dir) / "results").glob("*.json")):
        rows += _read_result(path)["rows"]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=list(RESULT_COLUMNS))
    frame = frame[[c for c in RESULT_COLUMNS if c in frame] + [c for c in frame if c not in RESULT_COLUMNS]]
    return frame.sort_values(["seed", "resolution", "arch", "task"], kind="stable").reset_index(drop=True)


def write_results_csv(out_dir: str | Path) -> Path:
    """Rebuild ``OUT/results.csv`` from the result files (atomically)."""
    path = Path(out_dir) / "results.csv"
    atomic_write_text(path, read_results(out_dir).to_csv(index=False))
    return path


def _stale_runs(specs: Sequence[RunSpec], out: Path) -> list[str]:
    """Keys whose stored result or run directory was made with another recipe."""
    stale = []
    for spec in specs:
        result = out / "results" / f"{spec.key}.json"
        if result.is_file():
            rows = _read_result(result)["rows"]
            if rows and rows[0].get("fingerprint") != spec.fingerprint:
                stale.append(spec.key)
            continue
        config = out / "runs" / spec.key / "config.yaml"
        if config.is_file():
            old = yaml.safe_load(config.read_text())
            if recipe_fingerprint(old) != spec.fingerprint:
                stale.append(spec.key)
    return stale


def _write_progress(out: Path, progress: StudyProgress) -> None:
    atomic_write_json(out / "progress.json", {**dataclasses.asdict(progress), "pending": progress.pending,
                                              "time": time.time()})


def run_study(study: StudyConfig, out_dir: str | Path, executor: Any = None,
              progress: Callable[[StudyProgress], None] | None = None,
              epoch_hook: Callable[[int, int], None] | None = None, prepare: bool = True,
              rerun_changed: bool = False) -> StudySummary:
    """Run every unfinished run of the study; returns what was done.

    Args:
        study: The study.
        out_dir: The study folder (see the module docstring); reuse it to resume.
        executor: A :mod:`cxrlab.pipelines.executors` executor (default: inline).
        progress: Called with a :class:`StudyProgress` after every event.
        epoch_hook: Passed to every run's ``train`` (inline executor only; tests).
        prepare: Build the resolution caches here before dispatching (surfaces data
            errors early; turn off when this machine cannot read the data).
        rerun_changed: Re-run (from scratch) runs whose recipe changed since they were
            run; otherwise such runs are an error.

    Raises:
        ConfigError: Changed recipes without ``rerun_changed``; a study already running.
        KeyboardInterrupt: Propagated after the executor is stopped.
    """
    from cxrlab.pipelines.executors import InlineExecutor

    out = Path(out_dir).resolve()
    executor = executor or InlineExecutor()
    with _study_lock(out):
        study = prepare_phantoms(study, out)
        specs = expand_grid(study, out)
        atomic_write_text(out / "study.yaml", yaml.safe_dump(study.to_dict(), sort_keys=False))
        atomic_write_text(out / "plan.csv", pd.DataFrame([s.plan_row() for s in specs]).to_csv(index=False))
        stale = _stale_runs(specs, out)
        if stale and not rerun_changed:
            listed = ", ".join(stale[:3]) + (", ..." if len(stale) > 3 else "")
            raise ConfigError(out, f"{len(stale)} run(s) were made with another recipe ({listed}); pass "
                                   "--rerun-changed or use a new --out")
        for key in stale:
            (out / "results" / f"{key}.json").unlink(missing_ok=True)
            shutil.rmtree(out / "runs" / key, ignore_errors=True)
        todo = [s for s in specs if not (out / "results" / f"{s.key}.json").is_file()]
        state = StudyProgress(total=len(specs), skipped=len(specs) - len(todo))
        started, durations, begun = time.time(), [], {}
        failed: dict[str, str] = {}
        if prepare and todo:
            from cxrlab.pipelines.classify_data import prepare_data

            for size in sorted({s.resolution for s in todo}):
                first = next(s for s in todo if s.resolution == size)
                cfg = config_from_dict(first.config)
                with _file_lock(Path(cfg.output.root) / "cache" / f".prepare-{size}.lock"):
                    prepare_data(cfg)
        fn: Callable[[Any], Any] = execute_run
        if epoch_hook is not None:
            if not isinstance(executor, InlineExecutor):
                raise ConfigError("epoch_hook", "only the inline executor can pass an epoch hook")
            import functools

            fn = functools.partial(execute_run, epoch_hook=epoch_hook)
        items = [(s.key, {"spec": s.plan_row(), "config": s.config, "effective": s.effective_batch,
                          "prepared": prepare, "keep_checkpoints": study.keep_checkpoints}) for s in todo]

        def report(last: str) -> None:
            state.elapsed, state.last = time.time() - started, last
            if durations:
                parallel = max(1, min(getattr(executor, "max_parallel", 1), state.pending + state.running))
                state.eta_seconds = sum(durations) / len(durations) * (state.pending + state.running) / parallel
            _write_progress(out, state)
            if progress is not None:
                progress(state)

        report("starting")
        for event in executor.run(fn, items):
            if event.kind == "started":
                state.running += 1
                begun[event.key] = time.time()
                report(f"started {event.key}")
                continue
            state.running -= 1
            durations.append(time.time() - begun.pop(event.key, time.time()))
            if event.kind == "finished":
                atomic_write_json(out / "results" / f"{event.key}.json",
                                  {"key": event.key, "rows": event.result["rows"]})
                (out / "failures" / f"{event.key}.json").unlink(missing_ok=True)
                write_results_csv(out)
                state.done += 1
                report(f"finished {event.key}")
            else:
                failed[event.key] = event.error or "unknown error"
                atomic_write_json(out / "failures" / f"{event.key}.json",
                                  {"key": event.key, "error": event.error, "detail": event.detail,
                                   "time": time.time()})
                state.failed += 1
                log.error("run %s failed: %s", event.key, event.error)
                report(f"failed {event.key}: {event.error}")
        results_csv = write_results_csv(out)
    return StudySummary(out, len(specs), state.skipped, state.done, failed, results_csv)
