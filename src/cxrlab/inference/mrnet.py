"""The MRNet predictor: a run folder's nine networks, landmarks and logistic regressions.

``MRNetPredictor.from_run_dir(run)`` once, then :meth:`MRNetPredictor.predict` per exam (a
dict plane -> :class:`~cxrlab.io.volume.Volume`): per task, every plane's probability and
the combined one. It never imports Lightning or training code; training prepares its slices
with the same :func:`prepare_series`. The class activation map of the top slice is built on
:meth:`MRNetPredictor.top_slice` by the layers above (``cxrlab.explain.cam``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrlab.config.mrnet import read_run_config
from cxrlab.data.volume_transforms import standardize, to_slices
from cxrlab.errors import ExamError, MissingFileError
from cxrlab.io.volume import Volume
from cxrlab.models.mrnet import PlaneNet, load_plane_checkpoint

log = logging.getLogger(__name__)

CHECKPOINTS = {"auroc": "best_auroc.pt", "loss": "best_loss.pt"}


def plane_checkpoint(run_dir: str | Path, task: str, plane: str, monitor: str) -> Path:
    """The checkpoint of a network the run uses (``train.monitor`` picks ``best_auroc.pt`` or
    ``best_loss.pt``; the loss one when a tune AUROC was never defined).

    Raises:
        MissingFileError: The network has no checkpoint.
    """
    folder = Path(run_dir) / task / plane
    for name in (CHECKPOINTS[monitor], CHECKPOINTS["loss"]):
        if (folder / name).is_file():
            return folder / name
    raise MissingFileError(folder, f"no checkpoint of the {task} {plane} network; did its training finish?")


def prepare_series(array: np.ndarray, landmarks: list[float] | np.ndarray, size: int,
                   normalization: str) -> torch.Tensor:
    """One series -> ``(S, 3, size, size)``: histogram standardization with the run's landmarks,
    resize, three channels, normalization (training and prediction alike)."""
    return to_slices(standardize(array, np.asarray(landmarks)), size, normalization)


def _sigmoid(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-value)) if value >= 0 else math.exp(value) / (1.0 + math.exp(value))


class MRNetPredictor:
    """Per-plane networks plus, per task, the stored logistic regression over the planes.

    Args:
        nets: ``(task, plane) -> (network, metadata)``.
        combine: ``combine.json``'s content, or None before it is fitted.
        device: Where the networks run.
    """

    def __init__(self, nets: Mapping[tuple[str, str], tuple[PlaneNet, dict[str, Any]]],
                 combine: Mapping[str, Any] | None, device: str | torch.device = "cpu") -> None:
        self.nets = dict(nets)
        self.combine = dict(combine) if combine is not None else None
        self.device = torch.device(device)
        self.tasks = list(dict.fromkeys(task for task, _ in self.nets))
        self.planes = list(dict.fromkeys(plane for _, plane in self.nets))
        for net, _ in self.nets.values():
            net.to(self.device).eval()

    @classmethod
    def from_run_dir(cls, run_dir: str | Path, device: str | torch.device = "cpu",
                     require_combine: bool = True) -> MRNetPredictor:
        """Open a finished (or, with ``require_combine=False``, a trained but not combined) run.

        Raises:
            MissingFileError: No config, a network's checkpoint or ``combine.json`` is missing.
        """
        run_dir = Path(run_dir)
        cfg = read_run_config(run_dir)
        nets = {(task, plane): load_plane_checkpoint(plane_checkpoint(run_dir, task, plane, cfg.train.monitor))
                for task in cfg.tasks for plane in cfg.planes}
        combine = None
        path = run_dir / "combine.json"
        if path.is_file():
            combine = json.loads(path.read_text())
        elif require_combine:
            raise MissingFileError(path, "the run has no logistic regressions; did its training finish?")
        return cls(nets, combine, device)

    def prepare(self, volume: Volume, task: str, plane: str) -> torch.Tensor:
        """One series as the network of ``task``/``plane`` expects it."""
        meta = self.nets[(task, plane)][1]
        return prepare_series(volume.array, meta["landmarks"], int(meta["size"]), meta["normalization"]).to(self.device)

    def _check(self, volumes: Mapping[str, Volume]) -> None:
        missing = [p for p in self.planes if p not in volumes]
        if missing:
            raise ExamError(None, f"exam lacks the plane(s) {missing} the model needs")

    @torch.no_grad()
    def predict(self, volumes: Mapping[str, Volume]) -> dict[str, dict[str, float]]:
        """``{task: {plane: probability, ..., "combined": probability}}`` for one exam
        (``combined`` only when the run's logistic regressions are loaded)."""
        self._check(volumes)
        out: dict[str, dict[str, float]] = {}
        prepared: dict[tuple[str, Any, int, str], torch.Tensor] = {}
        for (task, plane), (net, meta) in self.nets.items():
            key = (plane, tuple(meta["landmarks"]), int(meta["size"]), meta["normalization"])
            if key not in prepared:
                prepared[key] = self.prepare(volumes[plane], task, plane)
            out.setdefault(task, {})[plane] = float(torch.sigmoid(net(prepared[key]).float())[0])
        if self.combine is not None:
            for task, probs in out.items():
                probs["combined"] = self.combined(task, probs)
        return out

    def combined(self, task: str, probs: Mapping[str, float]) -> float:
        """The task's logistic regression on the planes' probabilities."""
        if self.combine is None:
            raise MissingFileError("combine.json", "no logistic regressions loaded")
        spec = self.combine[task]
        z = float(spec["intercept"]) + float(np.dot(spec["coef"], [probs[p] for p in spec["planes"]]))
        return _sigmoid(z)

    def threshold(self, task: str, model: str = "combined") -> float:
        """The stored operating threshold of a task's ``model`` (a plane or ``combined``; 0.5 when none)."""
        spec = (self.combine or {}).get(task, {})
        return float(spec.get("thresholds", {}).get(model, spec.get("threshold", 0.5)))

    def top_slice(self, volumes: Mapping[str, Volume], task: str, plane: str) -> tuple[int, torch.Tensor]:
        """The slice of ``plane`` that gave the network's maximum, and the prepared series
        ``(S, 3, size, size)`` (for a class activation map of that slice)."""
        if plane not in volumes:
            raise ExamError(None, f"exam lacks the {plane} plane")
        x = self.prepare(volumes[plane], task, plane)
        return self.nets[(task, plane)][0].top_slice(x), x
