"""Up-front checks of a classification recipe, before any cache is built or run folder claimed.

A full-size start spends minutes on the resolution cache; a typo in ``valid_options`` or
a weights path found only after that costs the minutes and, worse, leaves a run folder
that refuses the corrected re-run. :func:`check_recipe` looks at every path and choice
the recipe names, with file-system checks only (no CSV is parsed, no image read), and
reports every problem at once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cxrlab.config import ExperimentConfig
from cxrlab.data.datasets import DATASETS, path_options
from cxrlab.errors import ConfigError, MissingFileError

#: Adapter options that name a folder; every other path option the dataset declares names a file.
FOLDER_KEYS = ("root",)
CHANNELS = (1, 3)
NORMALIZATIONS = ("imagenet", "xrv", "unit")
ON_ERROR = ("raise", "skip")
SIZE_RANGE = (16, 4096)


def _option_problems(section: str, options: Mapping[str, Any], dataset: str) -> list[tuple[str, str]]:
    problems = []
    for key in path_options(dataset):
        value = options.get(key)
        if not isinstance(value, str) or not value:
            continue
        path = Path(value)
        field = f"{section}.{key}"
        if key in FOLDER_KEYS:
            if not path.is_dir():
                problems.append((field, f"folder {value} does not exist"))
        elif not path.is_file():
            problems.append((field, f"file {value} does not exist"))
    return problems


def _writable_ancestor(path: Path) -> Path | None:
    """The nearest existing folder at or above ``path`` when it is writable, else None."""
    current = path.absolute()
    while not current.exists():
        current = current.parent
    return current if current.is_dir() and os.access(current, os.W_OK | os.X_OK) else None


def check_recipe(cfg: ExperimentConfig, resume: bool = False) -> None:
    """Check a classification recipe's paths and choices; raise with every problem.

    Checked: the adapter name; every path option of ``data.options`` and
    ``data.valid_options`` (files exist, ``root`` is a folder); an explicit
    ``data.cache`` folder is a cache or absent (and creatable); ``data.size``,
    ``channels``, ``normalization``, ``on_error``, ``batch_size``/``micro_batch`` and the
    split fractions; a ``model.pretrained`` path exists; the output root is writable and
    the run folder is free (or ``resume``).

    Raises:
        MissingFileError: Only paths are wrong (the first names the file; the message
            lists all).
        ConfigError: A choice is invalid (the message lists every problem).
    """
    data = cfg.data
    problems: list[tuple[str, str]] = []
    if data.dataset not in DATASETS:
        problems.append(("data.dataset", f"unknown dataset {data.dataset!r}; known: "
                                         f"{', '.join(sorted(DATASETS))}"))
    problems += _option_problems("data.options", data.options, data.dataset)
    problems += _option_problems("data.valid_options", data.valid_options, data.dataset)
    if not isinstance(data.size, int) or not SIZE_RANGE[0] <= data.size <= SIZE_RANGE[1]:
        problems.append(("data.size", f"must be an integer in [{SIZE_RANGE[0]}, "
                                      f"{SIZE_RANGE[1]}], got {data.size!r}"))
    if data.channels not in CHANNELS:
        problems.append(("data.channels", f"must be 1 or 3, got {data.channels!r}"))
    if data.normalization not in NORMALIZATIONS:
        problems.append(("data.normalization", f"must be one of {NORMALIZATIONS}, "
                                               f"got {data.normalization!r}"))
    if data.on_error not in ON_ERROR:
        problems.append(("data.on_error", f"must be 'raise' or 'skip', got {data.on_error!r}"))
    micro = data.micro_batch or data.batch_size
    if data.batch_size <= 0 or micro <= 0 or data.batch_size % micro:
        problems.append(("data.micro_batch", f"batch_size {data.batch_size} must be a positive "
                                             f"multiple of micro_batch {micro}"))
    fractions = {k: float(v) for k, v in dict(data.split).items()}
    if any(v < 0 for v in fractions.values()) or fractions.get("train", 0) <= 0:
        problems.append(("data.split", f"needs a positive 'train' fraction and no negative "
                                       f"one, got {fractions}"))
    elif not data.valid_options and fractions.get("valid", 0) <= 0:
        problems.append(("data.split", "no validation set: give data.valid_options or a "
                                       "positive 'valid' fraction"))
    if data.cache not in ("auto", "none"):
        folder = Path(data.cache)
        if folder.exists() and not (folder / "manifest.json").is_file() and \
                (not folder.is_dir() or any(folder.iterdir())):
            problems.append(("data.cache", f"{folder} exists and is not a resolution cache"))
        elif not folder.exists() and _writable_ancestor(folder) is None:
            problems.append(("data.cache", f"cannot create {folder} (no writable folder above)"))
    pretrained = cfg.model.pretrained
    if isinstance(pretrained, str) and pretrained not in ("imagenet", "") and \
            not Path(pretrained).is_file():
        problems.append(("model.pretrained", f"weights file {pretrained} does not exist "
                                             "(or use 'imagenet')"))
    root = Path(cfg.output.root)
    if _writable_ancestor(root) is None:
        problems.append(("output.root", f"cannot create or write {root}"))
    run_dir = root / cfg.name
    if not resume and run_dir.is_dir() and any(run_dir.iterdir()):
        problems.append(("name", f"run folder {run_dir} exists; choose another name= or "
                                 "remove it, or pass --resume to continue it"))
    if not problems:
        return
    text = "; ".join(f"{field}: {problem}" for field, problem in problems)
    only_paths = all("does not exist" in problem for _field, problem in problems)
    if only_paths:
        raise MissingFileError(problems[0][0], f"recipe check failed before any work: {text}")
    raise ConfigError(problems[0][0], f"recipe check failed before any work: {text}")
