"""The run directory every training command writes: claiming it and its ``status.json``.

Classification (``cxrlab train``), pneumothorax (``cxrlab seg train``) and screening
(``cxrlab screen train``) runs share one life cycle::

    run_dir = claim_run_directory(path, resume=..., overwrite=...)
    ...write config.yaml...
    with run_status(run_dir) as status:      # status.json: running
        ...train, evaluate...
        status.set("evaluating")             # any intermediate state
        status.finished()                    # finished, with the seconds since "running"
    # an exception inside the block leaves status.json: failed, with the error, and re-raises

``status.json`` is written atomically, so a killed run never leaves a half-written file;
the dashboard and the study runner read it with :func:`read_status`. ``run.json`` says what
kind of run the folder holds and in which format version (:func:`write_run_json`), so readers
need not guess from the files they find.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cxrlab import __version__
from cxrlab.errors import ConfigError
from cxrlab.utils import atomic_write_json

RUN_FORMAT_VERSION = 1
"""Version of the run-folder layout written by this cxrlab (``run.json``'s ``format``)."""

RUN_KINDS = ("classification", "segmentation", "screening", "mrnet", "brats")
"""The kinds of training run a ``run.json`` names."""


class RunDir:
    """The named files of a run folder (one place for their names)."""

    CONFIG = "config.yaml"
    SPLIT = "split.json"
    STATUS = "status.json"
    RUN = "run.json"
    HISTORY = "history.csv"
    BEST = "best.json"
    METRICS = "metrics.json"
    CHECKPOINTS = "checkpoints"
    LOG = "train.log"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def read_run_json(self) -> dict[str, Any]:
        """``run.json`` (``{}`` for a run written before it existed)."""
        return read_run_json(self.path)


def write_run_json(run_dir: str | Path, kind: str, **extra: Any) -> Path:
    """Write ``run.json``: the run's kind, the format version and the cxrlab version."""
    if kind not in RUN_KINDS:
        raise ConfigError("kind", f"unknown run kind {kind!r}; choose from {RUN_KINDS}")
    return atomic_write_json(Path(run_dir) / RunDir.RUN, {"kind": kind, "format": RUN_FORMAT_VERSION,
                                                          "cxrlab": __version__, **extra})


def read_run_json(run_dir: str | Path) -> dict[str, Any]:
    """A run's ``run.json`` (``{}`` when missing or unreadable: a run from an older cxrlab)."""
    path = Path(run_dir) / RunDir.RUN
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def process_rank() -> int:
    """Global rank of this training process (0 when not launched as a DDP worker).

    Lightning's DDP launcher re-runs the command for ranks 1..N-1 with ``LOCAL_RANK``
    (and ``NODE_RANK``) set; torchrun and SLURM set ``RANK``. Rank 0 owns the run folder.
    """
    for name in ("RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    local = os.environ.get("LOCAL_RANK", "")
    return int(local) if local.isdigit() else 0


def claim_run_directory(run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
                        hint: str = "", kind: str | None = None) -> Path:
    """Create ``run_dir`` for a new run; refuse one that already holds files.

    Args:
        run_dir: ``output.root/name`` of the recipe.
        resume: Keep the files of an existing run (the caller continues it).
        overwrite: Delete an existing run first.
        hint: What else the command offers, e.g. ``"pass --resume to continue it"``.
        kind: When given, ``run.json`` is written with this kind (:data:`RUN_KINDS`).

    Raises:
        ConfigError: The directory holds files and neither ``resume`` nor ``overwrite`` is set.

    On a DDP worker of rank > 0 (see :func:`process_rank`) nothing is checked or deleted.
    """
    run_dir = Path(run_dir)
    if process_rank() > 0:
        # A DDP worker re-running the command: rank 0 has claimed the folder already and
        # alone writes its files.
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        if not overwrite:
            raise ConfigError(str(run_dir), "run directory exists; choose another name= or remove it"
                                            + (f", or {hint}" if hint else ""))
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if kind is not None:
        write_run_json(run_dir, kind)
    return run_dir


def read_status(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``status.json`` (``{}`` when there is none)."""
    path = Path(run_dir) / "status.json"
    return json.loads(path.read_text()) if path.is_file() else {}


class RunStatus:
    """Writes ``RUN/status.json``: ``{"state": ..., "time": ..., **extra}``."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / "status.json"
        self.started = time.time()

    def set(self, state: str, **extra: Any) -> None:
        atomic_write_json(self.path, {"state": state, "time": time.time(), **extra})

    def finished(self, **extra: Any) -> None:
        self.set("finished", seconds=round(time.time() - self.started, 1), **extra)


@contextmanager
def run_status(run_dir: str | Path) -> Iterator[RunStatus]:
    """``running`` on entry; ``failed`` with the error if the block raises (the error propagates)."""
    status = RunStatus(Path(run_dir))
    status.set("running")
    try:
        yield status
    except BaseException as err:
        status.set("failed", error=f"{type(err).__name__}: {err}")
        raise
