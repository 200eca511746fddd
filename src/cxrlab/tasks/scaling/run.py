"""Resolution and model-scaling studies (seed 001): run the grid, resumably.

The plan (study file, batch rule, grid) lives in :mod:`cxrlab.tasks.scaling.plan`.

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
difference is made up by gradient accumulation (``cxrlab.tasks.classification.data``).
A GPU out-of-memory error retries the run with the next smaller micro-batch. The batch
actually used is recorded in ``results.csv``.

Output folder ``OUT``::

    OUT/study.yaml              the study as run (resolved recipe included)
    OUT/plan.csv                every run of the grid with its batch plan
    OUT/runs/<key>/             each run's directory (cxrlab.tasks.classification.train.train)
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
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from cxrlab.config import config_from_dict
from cxrlab.config.study import RESULT_COLUMNS, BatchRule, StudyConfig
from cxrlab.data.synthetic_layouts import write_dataset
from cxrlab.engine.executors import InlineExecutor
from cxrlab.errors import ConfigError
from cxrlab.runs.rundir import read_status
from cxrlab.tasks.classification.data import prepare_data
from cxrlab.tasks.classification.train import train
from cxrlab.tasks.scaling.plan import RunSpec, expand_grid, recipe_fingerprint
from cxrlab.utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

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
        epoch_hook: Passed to :func:`cxrlab.tasks.classification.train.train` (tests).
    """
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
        executor: A :mod:`cxrlab.engine.executors` executor (default: inline).
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
