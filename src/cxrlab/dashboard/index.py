"""The run index: every run directory under a run root, read once and cached.

A run root holds run directories at any depth (``runs/demo/bce``, a scaling study's
``OUT/runs/<key>``, a cross-validation's ``OUT/foldK``). The index walks the root with
``os.scandir``, recognises each directory by the files its writer leaves, reads the
small summary files (``config.yaml``, ``status.json``, ``metrics.json``, ...) and keeps
one :class:`RunRecord` per directory. A record is re-read only when its signature —
the directory's modification time plus the times and sizes of its key files — changes;
every writer in cxrlab replaces files atomically (which updates the directory's time),
so a refresh re-reads exactly the runs that changed. :func:`open_index` also keeps the
records on disk (:func:`default_cache_dir`), so a new dashboard process — and the first
page it serves — starts from the last scan and only re-reads what changed since.

Kinds (:data:`KINDS`), by the files that mark them:

* ``study`` — a scaling study (``results.csv`` with ``study.yaml``/``plan.csv``); its
  ``runs/`` children are indexed as classification runs with ``parent`` set;
* ``segmentation_cv`` — a pneumothorax cross-validation (``cv_table.csv``/``cv_metrics.json``);
  its ``foldK/`` children are indexed as segmentation runs;
* ``segmentation`` — a pneumothorax run (``postprocess.json`` or ``baseline/``/``one_case/``);
* ``screening`` — a normal-screening run (``report.json`` with ``tables/``, or ``ensemble/``/``shared/``);
* ``explanation`` — ``cxrlab explain`` output (``explanations.csv``);
* ``localization`` — ``cxrlab explain localize`` output (``localization_summary.csv``);
* ``seg_predictions`` — ``cxrlab seg predict`` output (``predictions.csv`` + ``masks/``);
* ``mrnet`` — a knee-MRI MRNet run (declared in ``run.json``); its AUROCs are the combined
  (logistic-regression) model's per task on the held-out ``valid`` exams;
* ``brats`` — a BraTS run (declared in ``run.json`` only; per-region Dice/HD95 from ``metrics.json``);
* ``classification`` — anything else with ``config.yaml`` or ``status.json``.

Nothing here raises on a bad run directory: a file that cannot be read or parsed makes
the record ``state="unreadable"`` with the file and the error in ``problem``; a run
without its final files is ``incomplete``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cxrlab.runs.rundir import RunDir, read_run_json

log = logging.getLogger(__name__)

KINDS = ("classification", "study", "segmentation", "segmentation_cv", "screening", "explanation",
         "localization", "seg_predictions", "mrnet", "brats")
SPLITS = ("valid", "test")
CACHE_VERSION = 1
"""Version of the on-disk index format (a mismatch discards the saved copy)."""
MAX_DEPTH = 4
"""How deep below the root unrecognised folders are searched for runs."""

SKIP_DIRS = frozenset({"cache", "checkpoints", "phantoms", "data", "mlruns", "mlartifacts", "images", "masks", "overlays",
                       "curves_valid", "curves_test", "__pycache__", "node_modules", "gate_data", "results",
                       "failures", "tables", "predictions"})
"""Folders never searched for runs (caches, data, a run's own sub-folders)."""

KEY_FILES = ("config.yaml", "status.json", "metrics.json", "best.json", "report.json", "results.csv",
             "progress.json", "cv_table.csv", "cv_metrics.json", "explanations.csv",
             "localization_summary.csv", "predictions.csv", "study.yaml")
_READ_ERRORS = (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError, yaml.YAMLError)
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class RunRecord:
    """What the index knows of one run directory.

    Attributes:
        path: The directory.
        name: Its path relative to the run root (POSIX separators): the run's name here.
        kind: One of :data:`KINDS`.
        state: ``finished``, ``running``, ``evaluating``, ``failed``, ``incomplete`` or
            ``unreadable``.
        problem: Why a run is unreadable or incomplete (file and error), else None.
        date: Last status time (seconds since the epoch), else the directory's mtime.
        parent: Name of the study or cross-validation the run belongs to.
        dataset, arch, resolution, loss, seed: From the recipe (classification runs; the
            U-Net encoder and size for segmentation runs).
        tasks: Task (class) names.
        aurocs: ``split -> task -> {"auroc", "ci_low", "ci_high", "n", "n_positive"}``.
        mean_auroc: ``split -> mean AUROC``.
        info: Kind-specific summary (study grid, screening sensitivity, ...).
    """

    path: Path
    name: str
    kind: str
    state: str = "finished"
    problem: str | None = None
    date: float | None = None
    parent: str | None = None
    dataset: str | None = None
    arch: str | None = None
    resolution: int | None = None
    loss: str | None = None
    seed: int | None = None
    tasks: tuple[str, ...] = ()
    aurocs: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)
    mean_auroc: dict[str, float | None] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    signature: tuple = ()

    @property
    def readable(self) -> bool:
        """False when a summary file could not be read."""
        return self.state != "unreadable"


# ------------------------------------------------------------------------------- readers


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path.name}: {err}") from err


def _yaml(path: Path) -> Any:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as err:
        raise ValueError(f"{path.name}: {str(err).splitlines()[0]}") from err
    if data is not None and not isinstance(data, dict):
        raise ValueError(f"{path.name}: expected a mapping at the top level")
    return data or {}


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None


def _count_rows(path: Path) -> int:
    with open(path, newline="", encoding="utf-8") as handle:
        return max(sum(1 for _ in csv.reader(handle)) - 1, 0)


def _status(record: RunRecord, path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    status = _json(path)
    record.state = str(status.get("state", "incomplete"))
    record.date = _float(status.get("time")) or record.date
    if record.state == "failed" and status.get("error"):
        record.problem = str(status["error"])
    return status


def _loss_of(train: dict[str, Any]) -> str | None:
    default = train.get("loss")
    losses: list[str] = []
    for phase in train.get("phases") or []:
        name = (phase or {}).get("loss") or default
        if name and name not in losses:
            losses.append(str(name))
    return "→".join(losses) if losses else (str(default) if default else None)


def _read_config(record: RunRecord, files: set[str], arch: tuple[str, str]) -> dict[str, Any]:
    """The fields every run's ``config.yaml`` shares (arch from ``cfg[arch[0]][arch[1]]``); the config."""
    if "config.yaml" not in files:
        return {}
    cfg = _yaml(record.path / "config.yaml")
    data = cfg.get("data") or {}
    record.dataset = data.get("dataset")
    record.arch = (cfg.get(arch[0]) or {}).get(arch[1])
    record.resolution = int(data["size"]) if data.get("size") is not None else None
    record.seed = int(cfg["seed"]) if cfg.get("seed") is not None else None
    return cfg


def _has_results(record: RunRecord, files: set[str], name: str) -> bool:
    """Read ``status.json``; whether the results file ``name`` is there (a finished run without it is incomplete)."""
    _status(record, record.path / "status.json")
    if name in files:
        return True
    if record.state == "finished":
        record.state, record.problem = "incomplete", f"no {name}"
    return False


def _read_classification(record: RunRecord, files: set[str]) -> None:
    path = record.path
    cfg = _read_config(record, files, ("model", "arch"))
    if cfg:
        record.loss = _loss_of(cfg.get("train") or {})
        record.tasks = tuple(str(t) for t in (cfg.get("data") or {}).get("tasks") or ())
        record.info["config_name"] = cfg.get("name")
    if not _has_results(record, files, "metrics.json"):
        if "status.json" not in files:
            record.state, record.problem = "incomplete", "no status.json or metrics.json"
        return
    metrics = _json(path / "metrics.json")
    if not isinstance(metrics, dict):
        raise ValueError("metrics.json: expected an object")
    record.tasks = tuple(str(t) for t in metrics.get("tasks") or record.tasks)
    for split in SPLITS:
        block = metrics.get(split)
        if not isinstance(block, dict):
            continue
        record.mean_auroc[split] = _float(block.get("mean_auroc"))
        record.aurocs[split] = {
            str(task): {"auroc": _float(rep.get("auroc")), "ci_low": _float(rep.get("auroc_ci_low")),
                        "ci_high": _float(rep.get("auroc_ci_high")), "n": _float(rep.get("n")),
                        "n_positive": _float(rep.get("n_positive"))}
            for task, rep in (block.get("tasks") or {}).items()}
    if not record.aurocs and record.state == "finished":
        record.state, record.problem = "incomplete", "metrics.json has no valid/test scores"
    if "status.json" not in files and record.aurocs:
        record.state = "finished"


def _read_study(record: RunRecord, files: set[str]) -> None:
    path = record.path
    study: dict[str, Any] = {}
    if "study.yaml" in files:
        study = (_yaml(path / "study.yaml").get("study") or {})
    record.info.update({k: study.get(k) for k in ("name", "mode", "resolutions", "architectures", "seeds", "tasks")})
    record.tasks = tuple(str(t) for t in study.get("tasks") or ())
    record.info["n_results"] = _count_rows(path / "results.csv") if "results.csv" in files else 0
    record.info["has_report"] = "summary_by_resolution.csv" in files
    record.info["has_cam_grid"] = "fig_cam_grid.png" in files
    if "progress.json" in files:
        progress = _json(path / "progress.json")
        record.info["progress"] = {k: progress.get(k) for k in ("total", "done", "failed", "pending", "running")}
        pending, failed = progress.get("pending") or 0, progress.get("failed") or 0
        record.state = "finished" if not pending and not failed else ("failed" if failed and not pending
                                                                      else "running")
    if "results.csv" not in files:
        record.state, record.problem = "incomplete", "no results.csv yet"


def _read_segmentation(record: RunRecord, files: set[str]) -> None:
    cfg = _read_config(record, files, ("unet", "encoder"))
    if cfg:
        record.loss = (cfg.get("train") or {}).get("loss")
        record.tasks = ("Pneumothorax",)
        record.info["models"] = cfg.get("models")
    if not _has_results(record, files, "metrics.json"):
        return
    metrics = _json(record.path / "metrics.json")
    scores = {}
    for model, rows in (metrics.get("models") or {}).items():
        for row, result in (rows or {}).items():
            summary = (result or {}).get("test") or (result or {}).get("valid") or {}
            scores[f"{model}/{row}"] = _float(summary.get("dice_per_image"))
    record.info["dice_per_image"] = scores
    record.info["gate_auroc_test"] = _float((metrics.get("gate") or {}).get("auroc_test"))


def _read_segmentation_cv(record: RunRecord, files: set[str]) -> None:
    if "cv_metrics.json" in files:
        metrics = _json(record.path / "cv_metrics.json")
        record.info["folds"] = len(metrics.get("folds") or [])
        record.info["gate_auroc_test"] = metrics.get("gate_auroc_test")
    record.tasks = ("Pneumothorax",)
    if "cv_table.csv" not in files:
        record.state, record.problem = "incomplete", "no cv_table.csv"


def _read_screening(record: RunRecord, files: set[str]) -> None:
    cfg = _read_config(record, files, ("model", "encoder"))
    if cfg:
        record.tasks = tuple(str(t) for t in (cfg.get("data") or {}).get("diseases") or ())
    if not _has_results(record, files, "report.json"):
        return
    report = _json(record.path / "report.json")
    record.info.update({k: _float(report.get(k)) for k in ("sensitivity", "specificity", "auroc",
                                                            "unseen_predicted_normal_rate")})
    record.info["primary_variant"] = report.get("primary_variant")
    record.info["variants"] = sorted((report.get("variants") or {}).keys())
    if "status.json" not in files:
        record.state = "finished"


def _read_explanation(record: RunRecord, files: set[str]) -> None:
    name = "explanations.csv" if record.kind == "explanation" else "localization_summary.csv"
    record.info["n_rows"] = _count_rows(record.path / name)
    record.date = (record.path / name).stat().st_mtime


def _read_seg_predictions(record: RunRecord, files: set[str]) -> None:
    record.info["n_images"] = _count_rows(record.path / "predictions.csv")
    record.date = (record.path / "predictions.csv").stat().st_mtime
    record.tasks = ("Pneumothorax",)


def _read_mrnet(record: RunRecord, files: set[str]) -> None:
    cfg = _read_config(record, files, ("model", "arch"))
    if cfg:
        record.tasks = tuple(str(t) for t in cfg.get("tasks") or ())
        record.dataset = "mrnet" if (cfg.get("phantoms") is None) else "mrnet (SYNTHETIC phantoms)"
        record.loss = "bce (class-weighted)" if (cfg.get("train") or {}).get("weighted_loss", True) else "bce"
    if not _has_results(record, files, "metrics.json"):
        return
    metrics = _json(record.path / "metrics.json")
    split = str(metrics.get("split", "valid"))
    scores: dict[str, dict[str, float | None]] = {}
    for task, models in (metrics.get("tasks") or {}).items():
        for model, rep in (models or {}).items():
            entry = {"auroc": _float(rep.get("auroc")), "ci_low": _float(rep.get("auroc_ci_low")),
                     "ci_high": _float(rep.get("auroc_ci_high")), "n": _float(rep.get("n")),
                     "n_positive": _float(rep.get("positives"))}
            if model == "combined":
                scores[str(task)] = entry
            record.info.setdefault("models", {}).setdefault(str(task), {})[str(model)] = {
                **entry, **{k: _float(rep.get(k)) for k in ("sensitivity", "specificity", "accuracy")}}
    record.aurocs[split] = scores
    known = [v["auroc"] for v in scores.values() if v["auroc"] is not None]
    record.mean_auroc[split] = sum(known) / len(known) if known else None


def _read_brats(record: RunRecord, files: set[str]) -> None:
    cfg = _read_config(record, files, ("model", "arch"))
    record.tasks = ("WT", "TC", "ET")
    record.loss = "dice+ce" if cfg else None
    record.info["stages"] = (cfg.get("model") or {}).get("stages", 1) if cfg else None
    if "split.json" in files:
        split = _json(record.path / "split.json")
        record.dataset = f"brats ({split.get('layout')})"
    if not _has_results(record, files, "metrics.json"):
        return
    metrics = _json(record.path / "metrics.json")
    record.info["n_cases"] = metrics.get("n_cases")
    record.info["regions"] = {region: {k: _float(v) for k, v in (scores or {}).items()}
                              for region, scores in (metrics.get("mean") or {}).items()}


READERS = {"classification": _read_classification, "study": _read_study, "segmentation": _read_segmentation,
           "segmentation_cv": _read_segmentation_cv, "screening": _read_screening,
           "explanation": _read_explanation, "localization": _read_explanation,
           "seg_predictions": _read_seg_predictions, "mrnet": _read_mrnet,
           "brats": _read_brats}


def _declared_kind(path: Path, files: set[str]) -> str | None:
    """The kind ``run.json`` declares (runs since format 1): one of :data:`KINDS`, ``"other"`` for a
    run kind the dashboard has no page for yet (BraTS), or None without a ``run.json``."""
    if RunDir.RUN not in files:
        return None
    kind = read_run_json(path).get("kind")
    return kind if kind in KINDS else ("other" if kind else None)


def detect_kind(files: set[str], dirs: set[str]) -> str | None:
    """The kind of run a directory holds, from the names of its files and sub-folders (None: not a run);
    for folders written before ``run.json`` existed."""
    if "results.csv" in files and ({"study.yaml", "plan.csv", "summary_by_resolution.csv"} & files):
        return "study"
    if {"cv_table.csv", "cv_metrics.json", "cv_results.csv"} & files:
        return "segmentation_cv"
    if "postprocess.json" in files or ({"baseline", "one_case"} & dirs and "config.yaml" in files):
        return "segmentation"
    if ("report.json" in files and "tables" in dirs) or ({"ensemble", "shared"} & dirs and "config.yaml" in files):
        return "screening"
    if "explanations.csv" in files:
        return "explanation"
    if "localization_summary.csv" in files:
        return "localization"
    if "predictions.csv" in files and "masks" in dirs:
        return "seg_predictions"
    if {"config.yaml", "status.json"} & files:
        return "classification"
    return None


CHILDREN = {"study": ("runs",), "segmentation_cv": (".",), "screening": ("ablations",)}
"""Where runs nested in a container live (``.`` = its direct sub-folders)."""


# --------------------------------------------------------------------------------- index


class RunIndex:
    """Every run directory under ``root``, cached by path and modification times.

    Args:
        root: The run root.
        max_depth: How deep unrecognised folders are searched.
        cache_dir: Folder for the on-disk copy of the records (loaded by the first refresh,
            written when a refresh re-read something); None keeps them in memory only.

    Example:
        >>> index = RunIndex("runs")
        >>> records = index.refresh()       # first call reads every run; later calls re-read changed ones
    """

    def __init__(self, root: str | Path, max_depth: int = MAX_DEPTH, cache_dir: str | Path | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        self.max_depth = max_depth
        self.cache_file = (Path(cache_dir) / f"index-{hashlib.sha1(str(self.root).encode()).hexdigest()[:16]}.json"
                           if cache_dir is not None else None)
        """Where the records are kept between processes (None: in memory only)."""
        self._cache: dict[str, RunRecord] = {}
        self._records: list[RunRecord] = []
        self._lock = threading.Lock()
        self.last_scan: float | None = None
        self.reads = 0
        """How many run directories were (re-)read from disk so far."""

    @property
    def records(self) -> list[RunRecord]:
        """The records of the last refresh (empty before the first)."""
        return list(self._records)

    def get(self, name: str) -> RunRecord | None:
        """The record named ``name`` (its path relative to the root)."""
        return next((r for r in self._records if r.name == name), None)

    def of_kind(self, *kinds: str) -> list[RunRecord]:
        """Records of the given kinds, in index order."""
        return [r for r in self._records if r.kind in kinds]

    def refresh(self, max_age: float = 0.0) -> list[RunRecord]:
        """Walk the root again and re-read the run directories whose signature changed.

        Args:
            max_age: Skip the walk when the last one is younger than this (seconds).

        Returns:
            The records, sorted by name.
        """
        with self._lock:
            if self.last_scan is not None and time.time() - self.last_scan < max_age:
                return list(self._records)
            if self.last_scan is None:
                self._load()
            reads = self.reads
            found: dict[str, RunRecord] = {}
            if self.root.is_dir():
                for record in self._walk(self.root, 0, None, None):
                    found[record.name] = record
            self._cache = {str(r.path): r for r in found.values()}
            changed = self.reads != reads or len(found) != len(self._records)
            self._records = sorted(found.values(), key=lambda r: r.name)
            self.last_scan = time.time()
            if changed:
                self._save()
            return list(self._records)

    # -- the on-disk copy

    def _load(self) -> None:
        if self.cache_file is None or not self.cache_file.is_file():
            return
        try:
            saved = json.loads(self.cache_file.read_text(encoding="utf-8"))
            if saved.get("root") != str(self.root) or saved.get("version") != CACHE_VERSION:
                return
            for raw in saved["records"]:
                raw.update(path=Path(raw["path"]), tasks=tuple(raw["tasks"]), signature=_tuples(raw["signature"]))
                self._cache[str(raw["path"])] = RunRecord(**raw)
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.debug("ignoring the index cache %s: %s", self.cache_file, err)
            self._cache = {}

    def _save(self) -> None:
        if self.cache_file is None:
            return
        records = [{**dataclasses.asdict(r), "path": str(r.path)} for r in self._records]
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_file.with_name(f".{self.cache_file.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"version": CACHE_VERSION, "root": str(self.root), "records": records},
                                      default=str), encoding="utf-8")
            os.replace(tmp, self.cache_file)
        except (OSError, TypeError, ValueError) as err:
            log.debug("cannot write the index cache %s: %s", self.cache_file, err)

    # -- walking

    def _entries(self, path: Path) -> tuple[set[str], set[str], int]:
        files, dirs = set(), set()
        with os.scandir(path) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                try:
                    (dirs if entry.is_dir() else files).add(entry.name)
                except OSError:
                    files.add(entry.name)
        return files, dirs, os.stat(path).st_mtime_ns

    def _walk(self, path: Path, depth: int, parent: str | None, forced: str | None,
              entries: tuple[set[str], set[str], int] | None = None) -> Iterator[RunRecord]:
        name = path.relative_to(self.root).as_posix() if path != self.root else "."
        try:
            files, dirs, mtime = entries or self._entries(path)
        except OSError as err:
            if path != self.root:
                yield RunRecord(path=path, name=name, kind="classification", state="unreadable",
                                problem=f"{path}: {err.strerror or err}", parent=parent)
            return
        kind = forced or _declared_kind(path, files) or detect_kind(files, dirs)
        if kind == "other":         # a run the dashboard cannot show: neither listed nor searched
            return
        if kind is None:
            if depth < self.max_depth:
                for sub in sorted(dirs - SKIP_DIRS):
                    yield from self._walk(path / sub, depth + 1, parent, None)
            return
        yield self._record(path, name, kind, files, mtime, parent)
        for child in CHILDREN.get(kind, ()):
            if child != "." and child not in dirs:
                continue
            base = path if child == "." else path / child
            try:
                subdirs = sorted(dirs) if child == "." else sorted(
                    e.name for e in os.scandir(base) if e.is_dir() and not e.name.startswith("."))
            except OSError:
                continue
            for sub in subdirs:
                if sub in SKIP_DIRS:
                    continue
                sub_path = base / sub
                try:
                    sub_entries = self._entries(sub_path)
                except OSError as err:
                    yield RunRecord(path=sub_path, name=sub_path.relative_to(self.root).as_posix(),
                                    kind="classification", state="unreadable",
                                    problem=f"{sub_path}: {err.strerror or err}", parent=name)
                    continue
                sub_kind = detect_kind(sub_entries[0], sub_entries[1])
                if kind == "segmentation_cv" and sub_kind == "classification":
                    sub_kind = "segmentation"
                if sub_kind is not None:
                    yield from self._walk(sub_path, depth + 1, name, sub_kind, sub_entries)

    def _signature(self, path: Path, files: set[str], mtime: int) -> tuple:
        parts: list[Any] = [mtime]
        for key in KEY_FILES:
            if key in files:
                try:
                    st = os.stat(path / key)
                    parts.append((key, st.st_mtime_ns, st.st_size))
                except OSError:
                    parts.append((key, None))
        return tuple(parts)

    def _record(self, path: Path, name: str, kind: str, files: set[str], mtime: int, parent: str | None) -> RunRecord:
        signature = (kind, self._signature(path, files, mtime))
        cached = self._cache.get(str(path))
        if cached is not None and cached.signature == signature and cached.parent == parent:
            return cached
        self.reads += 1
        record = RunRecord(path=path, name=name, kind=kind, parent=parent, date=mtime / 1e9, signature=signature)
        try:
            READERS[kind](record, files)
        except _READ_ERRORS as err:
            record.state = "unreadable"
            record.problem = f"{type(err).__name__}: {err}"
        return record


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def default_cache_dir() -> Path:
    """``$CXRLAB_CACHE_DIR/dashboard``, else ``~/.cache/cxrlab/dashboard``."""
    base = os.environ.get("CXRLAB_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "cxrlab") / "dashboard"


_INDEXES: dict[str, RunIndex] = {}
_INDEXES_LOCK = threading.Lock()


def open_index(root: str | Path) -> RunIndex:
    """The process-wide :class:`RunIndex` of ``root`` (created on first use, then shared), kept on
    disk under :func:`default_cache_dir` so a new dashboard process starts from the last scan."""
    key = str(Path(root).expanduser().resolve())
    with _INDEXES_LOCK:
        if key not in _INDEXES:
            _INDEXES[key] = RunIndex(key, cache_dir=default_cache_dir())
        return _INDEXES[key]
