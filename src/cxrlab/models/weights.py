"""Classifier checkpoints that carry their metadata, and an input-range check.

Like torchxrayvision's models and timm's ``PretrainedCfg``, a checkpoint says what the
weights expect: architecture, labels, input size, preprocessing, normalization and the
operating threshold of each class. :func:`load_model_checkpoint` rebuilds the model from
that alone.

File layout (``torch.save`` of a dict, readable with ``torch.load(weights_only=True)``)::

    {"format": "cxrlab-classifier", "version": 1,
     "meta_json": "<JSON object>",      # the metadata, see save_model_checkpoint
     "state_dict": {...}}               # Classifier.state_dict(): body.* and head.*

The metadata travels as JSON text so any JSON value (NaN metrics, nested dicts) survives a
``weights_only`` load.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrlab.errors import ConfigError, InputError, MissingFileError
from cxrlab.models.classifier import Classifier, create_classifier
from cxrlab.utils import atomic_torch_save

FORMAT = "cxrlab-classifier"
VERSION = 1
ARCH_KEYS: tuple[str, ...] = ("arch", "num_classes", "in_chans", "head", "dropout")

INPUT_RANGES: dict[str, tuple[float, float]] = {
    "unit": (0.0, 1.0),
    "imagenet": ((0.0 - 0.485) / 0.229, (1.0 - 0.406) / 0.225),
    "xrv": (-1024.0, 1024.0),
}
"""The value range a batch has under each normalization of ``cxrlab.data.transforms.to_tensor``
(ImageNet: the extremes over the three channels' mean/std)."""


def save_model_checkpoint(path: str | os.PathLike, model: Classifier, meta: Mapping[str, Any]) -> Path:
    """Write ``model``'s weights and metadata to ``path`` atomically (tmp file + rename).

    Args:
        path: Output file (``.pt``); parent folders are created.
        model: A :class:`~cxrlab.models.classifier.Classifier`.
        meta: Metadata. The architecture keys (``arch``, ``num_classes``, ``in_chans``,
            ``head``, ``dropout``) are taken from the model and, when given, must agree
            with it. Known keys: ``labels`` (class names, one per logit), ``input_size``
            (image side in pixels), ``preprocessing`` (``PreprocessConfig.to_dict()``),
            ``normalization`` (``"imagenet"``, ``"xrv"`` or ``"unit"``), ``thresholds``
            (label -> operating threshold on the probability). Any other JSON-serializable
            keys (run name, validation metrics) are kept as they are; numpy scalars and
            arrays are converted.

    Returns:
        The written path.

    Raises:
        ConfigError: ``meta`` contradicts the model, or labels/thresholds do not fit it.
    """
    if not isinstance(model, Classifier):
        raise ConfigError("model", f"expected a cxrlab Classifier, got {type(model).__name__}")
    full = _complete_meta(model, meta)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "meta_json": json.dumps(full, default=_json_default),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    return atomic_torch_save(payload, path)


def load_model_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                          ) -> tuple[Classifier, dict[str, Any]]:
    """Rebuild a classifier from a file written by :func:`save_model_checkpoint`.

    Args:
        path: The checkpoint file.
        map_location: Where the weights are loaded (``torch.load``'s argument).

    Returns:
        ``(model, meta)``: the classifier in eval mode with the stored weights, and the
        metadata dict (``arch``, ``num_classes``, ``in_chans``, ``head``, ``dropout``,
        ``labels``, ``thresholds``, ... as saved).

    Raises:
        MissingFileError: No such file.
        InputError: Not a cxrlab classifier checkpoint, or its weights do not fit its metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, ValueError, EOFError, OSError, pickle.UnpicklingError) as err:
        raise InputError(path, f"cannot read checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(path, f"not a {FORMAT} checkpoint (written by cxrlab.models.weights."
                               "save_model_checkpoint); for plain state dicts use pretrained=PATH")
    if payload.get("version") != VERSION:
        raise InputError(path, f"checkpoint version {payload.get('version')!r}; this cxrlab reads {VERSION}")
    meta = json.loads(payload["meta_json"])
    model = create_classifier(meta["arch"], num_classes=int(meta["num_classes"]), in_chans=int(meta["in_chans"]),
                              head=meta["head"], dropout=float(meta["dropout"]), pretrained=None)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as err:
        raise InputError(path, f"weights do not fit {meta['arch']!r}: {str(err).splitlines()[0]}") from err
    return model.eval(), meta


def _complete_meta(model: Classifier, meta: Mapping[str, Any]) -> dict[str, Any]:
    full = dict(meta)
    for key, value in model.config.items():
        if key in full and full[key] != value and not (key == "dropout" and math.isclose(float(full[key]), value)):
            raise ConfigError(f"meta.{key}", f"metadata says {full[key]!r} but the model has {value!r}")
        full[key] = value
    labels = full.get("labels")
    if labels is not None:
        labels = [str(label) for label in labels]
        if len(labels) != model.num_classes:
            raise ConfigError("meta.labels", f"{len(labels)} labels for a model with {model.num_classes} outputs")
        full["labels"] = labels
    thresholds = full.get("thresholds")
    if thresholds is not None:
        if not isinstance(thresholds, Mapping):
            raise ConfigError("meta.thresholds", "must map each label to a probability threshold")
        unknown = sorted(set(map(str, thresholds)) - set(labels or []))
        if unknown:
            raise ConfigError("meta.thresholds", f"thresholds for unknown labels {unknown}; labels are {labels}")
        full["thresholds"] = {str(k): float(v) for k, v in thresholds.items()}
    normalization = full.get("normalization")
    if normalization is not None and normalization not in INPUT_RANGES:
        raise ConfigError("meta.normalization", f"unknown normalization {normalization!r}; "
                                                f"choose from {sorted(INPUT_RANGES)}")
    return full


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if torch.is_tensor(value):
        return value.detach().cpu().tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"metadata value of type {type(value).__name__} is not JSON serializable")


def check_input_range(x: torch.Tensor, normalization: str, tolerance: float = 0.05) -> str | None:
    """Warn when a batch does not look like ``normalization`` (torchxrayvision's check).

    Checks the batch's minimum and maximum against the range the normalization produces
    (:data:`INPUT_RANGES`), widened by ``tolerance`` of its width, and the typical
    mix-ups: uint8 values (0..255) or the ``xrv`` range fed where [0, 1] or ImageNet
    statistics were expected, [0, 1] images fed to an ImageNet model, a batch spanning
    less than 255 fed to an ``xrv`` model (as torchxrayvision warns). It is a
    heuristic on one batch: call it on the first batch, not every one.

    Args:
        x: A batch (any shape), as it is about to enter the model.
        normalization: ``"unit"``, ``"imagenet"`` or ``"xrv"``.
        tolerance: Allowed overshoot, as a fraction of the expected range's width.

    Returns:
        The warning text (also issued as a ``UserWarning``), or None when the batch fits.

    Raises:
        ConfigError: Unknown normalization.
    """
    if normalization not in INPUT_RANGES:
        raise ConfigError("normalization", f"unknown normalization {normalization!r}; "
                                           f"choose from {sorted(INPUT_RANGES)}")
    if x.numel() == 0:
        return None
    low, high = INPUT_RANGES[normalization]
    margin = tolerance * (high - low)
    x_min, x_max = float(x.min()), float(x.max())
    problem = None
    if not (math.isfinite(x_min) and math.isfinite(x_max)):
        problem = "it holds NaN or infinite values"
    elif x_min < low - margin or x_max > high + margin:
        problem = f"values leave the expected range [{low:.3g}, {high:.3g}]"
        if x_max > 2.0 and x_min >= -margin and normalization != "xrv":
            problem += " (unnormalized 0..255 pixels?)"
    elif normalization == "imagenet" and x_min >= 0.0 and x_max <= 1.0 + margin and x_max - x_min > 0:
        problem = "values lie in [0, 1] (unit scaling, ImageNet mean/std not applied?)"
    elif normalization == "xrv" and x_max - x_min < 255.0:
        problem = "values span less than 255 (unit or ImageNet scaling where [-1024, 1024] is expected?)"
    if problem is None:
        return None
    message = (f"input batch range [{x_min:.3g}, {x_max:.3g}] does not look like {normalization!r} "
               f"normalization: {problem}. Preprocess with the normalization stored in the checkpoint.")
    warnings.warn(message, UserWarning, stacklevel=2)
    return message
