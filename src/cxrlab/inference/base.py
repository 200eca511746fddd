"""What every predictor shares: the description of a loaded model and file versions."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SUFFIXES = {".dcm", ".dicom", ".png", ".jpg", ".jpeg"}


@dataclass(frozen=True)
class ModelInfo:
    """What a prediction says about the model that made it (the service returns it).

    Attributes:
        kind: ``classifier``, ``pneumothorax``, ``pneumothorax-gate`` or ``screening``.
        name: The run's name.
        version: :func:`file_version` of the weights files.
        files: The weights files.
        details: Kind-specific facts (labels, input size, post-processing, ...).
    """

    kind: str
    name: str
    version: str
    files: tuple[str, ...]
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "version": self.version, **self.details}


def file_version(paths: Sequence[Path]) -> str:
    """First 12 hex digits of the SHA-256 over the files' contents (in the order given)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


def iter_image_paths(items: Iterable[str | Path]) -> list[Path]:
    """Expand folders to the DICOM/PNG/JPEG files inside them (sorted)."""
    paths: list[Path] = []
    for item in items:
        item = Path(item)
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(item)
    return paths


def input_shape(tensor: Callable[[np.ndarray], Any]) -> tuple[int, int, int]:
    """``(C, H, W)`` a predictor's ``tensor`` makes of an image (a small ramp is preprocessed)."""
    probe = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (48, 1))
    return tuple(int(n) for n in tensor(probe).shape)  # type: ignore[return-value]
