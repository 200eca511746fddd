"""Small shared helpers: atomic file writes and hashing."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()
"""The process's umask, read once at import (reading it means setting it, which is not
thread-safe, so it is not read again per file)."""


def atomic_write(path: str | Path, write: Callable[[Path], None], private: bool = False) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``.

    A reader never sees a half-written file, and a crash leaves the old file intact. The
    file gets the permissions any file the user writes gets (``0666 & ~umask``), so a
    colleague's dashboard on a shared server can read a run; ``private`` keeps it readable
    by the owner only (``0600``: the service's stored images, the outbox).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        if not private:
            os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (NaN written as null)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and value != value:
            return None
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if hasattr(value, "item") and callable(value.item):
            return clean(value.item())
        return value

    return atomic_write_text(path, json.dumps(clean(obj), indent=2) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file, then rename."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))
