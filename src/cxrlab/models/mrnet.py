"""MRNet (Bien et al. 2018): one network per task and plane, slices as the batch, max over slices.

For one series of ``S`` slices, each ``3 x H x W`` (256 x 256 in the paper), the network runs
every slice through AlexNet's feature extractor (``torchvision.models.alexnet().features``:
256 maps of 7 x 7 at 256 px), averages each map globally (256 features per slice), takes the
maximum of every feature over the slices and maps the 256 maxima to one logit with a
linear layer. Any timm body can replace AlexNet (its global-average-pooled features).

The maximum over slices makes the output invariant to the order of the slices and to
repeating one: an exam's slice count may differ from plane to plane and exam to exam.

Weights: ``pretrained="imagenet"`` loads torchvision's AlexNet ImageNet weights (a download:
offline it raises :class:`~cxrlab.errors.WeightsUnavailableError`, as the classifiers do);
a path loads a local file (torchvision's ``alexnet-owt-7be5be79.pth`` or any state dict
with ``features.*`` keys; for timm bodies anything
:func:`cxrlab.models.classifier.load_body_weights` accepts).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxrlab.errors import (
    ConfigError,
    InputError,
    MissingFileError,
    WeightsUnavailableError,
)
from cxrlab.models.classifier import create_body
from cxrlab.models.registry import resolve_timm_name
from cxrlab.utils import atomic_torch_save

log = logging.getLogger(__name__)

ALEXNET = "alexnet"


class PlaneNet(nn.Module):
    """MRNet's network for one task and plane.

    Attributes:
        body: Slice feature extractor, ``(S, 3, H, W) -> (S, F, h, w)``.
        head: ``Linear(F, 1)``.
        arch: ``alexnet`` or a timm model name.
        num_features: F (256 for AlexNet).

    Shape:
        - Input: ``(S, 3, H, W)`` (one exam's series) or ``(1, S, 3, H, W)``.
        - Output: ``(1,)``, the exam's logit.
    """

    def __init__(self, body: nn.Module, num_features: int, arch: str) -> None:
        super().__init__()
        self.body = body
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(num_features, 1)
        self.arch = arch
        self.num_features = num_features
        self.num_classes = 1

    def slice_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(S, F)`` globally pooled features of every slice."""
        if x.ndim == 5:
            if x.shape[0] != 1:
                raise InputError(None, f"one exam per forward pass, got a batch of {x.shape[0]}")
            x = x[0]
        if x.ndim != 4 or x.shape[0] == 0:
            raise InputError(None, f"expected slices (S, C, H, W) with S >= 1, got {tuple(x.shape)}")
        return self.pool(self.body(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.slice_features(x)
        return self.head(features.max(dim=0).values)

    def top_slice(self, x: torch.Tensor) -> int:
        """The slice that gave the maximum: the one whose features, where they are the maxima,
        add most to the logit (sum over features of ``weight * value`` at the argmax slices)."""
        with torch.no_grad():
            features = self.slice_features(x)
            winners = features.argmax(dim=0)
            contribution = self.head.weight[0] * features.max(dim=0).values
            per_slice = torch.zeros(features.shape[0], device=features.device)
            per_slice.index_add_(0, winners, contribution)
        return int(per_slice.argmax())

    def slice_model(self) -> nn.Module:
        """A view of this network that reads one slice ``(1, 3, H, W)`` as an exam: for CAMs."""
        return _OneSlice(self)


class _OneSlice(nn.Module):
    def __init__(self, net: PlaneNet) -> None:
        super().__init__()
        self.net = net
        self.body = net.body
        self.num_classes = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.head(self.net.pool(self.body(x)).flatten(1))


def create_plane_net(arch: str = ALEXNET, pretrained: str | os.PathLike | None = None) -> PlaneNet:
    """Build a :class:`PlaneNet` over AlexNet or a timm body.

    Args:
        arch: ``alexnet`` (torchvision's) or any timm model name.
        pretrained: None, ``imagenet`` (download) or a path to a local weights file.

    Raises:
        WeightsUnavailableError: ImageNet weights cannot be downloaded.
        MissingFileError, InputError: The local file is missing or does not fit.
        ConfigError: Unknown architecture.
    """
    if arch == ALEXNET:
        from torchvision.models import alexnet

        body = alexnet(weights=None).features
        if pretrained is not None:
            _load_alexnet(body, pretrained)
        return PlaneNet(body, 256, arch)
    timm_name = resolve_timm_name(arch)
    kwargs: dict[str, Any] = {"num_classes": 0, "global_pool": "", "in_chans": 3}
    body = create_body(arch, timm_name, kwargs, pretrained, 3)
    if getattr(body, "output_fmt", "NCHW") != "NCHW":
        raise ConfigError("model.arch", f"{arch!r} returns {body.output_fmt} features; MRNet needs an NCHW CNN body")
    return PlaneNet(body, int(body.num_features), arch)


def _load_alexnet(features: nn.Module, pretrained: str | os.PathLike) -> None:
    if isinstance(pretrained, str) and pretrained == "imagenet":
        from torchvision.models import AlexNet_Weights

        try:
            state = AlexNet_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        except OSError as err:     # URLError and the hub's HTTP errors are OSErrors
            raise WeightsUnavailableError(
                f"cannot download ImageNet weights for 'alexnet' (torchvision AlexNet_Weights.IMAGENET1K_V1): "
                f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. Either connect to the "
                "internet so torchvision can download them, or download "
                f"{AlexNet_Weights.IMAGENET1K_V1.url} elsewhere and pass pretrained=PATH to the local file "
                "(model.pretrained=PATH in a recipe)") from err
        source: Any = "torchvision"
    else:
        path = Path(pretrained)
        if not path.is_file():
            raise MissingFileError(path, "pretrained weights file not found; pass pretrained='imagenet' to download "
                                         "torchvision's AlexNet weights or a path to them")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, ValueError, EOFError, OSError, pickle.UnpicklingError) as err:
            raise InputError(path, f"cannot read weights ({type(err).__name__}: {err})") from err
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        source = path
    if not isinstance(state, dict):
        raise InputError(source, "not a state dict")
    body = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    try:
        features.load_state_dict(body, strict=True)
    except RuntimeError as err:
        raise InputError(source, f"weights do not fit AlexNet's features: {str(err).splitlines()[0]}") from err


PLANE_FORMAT = "cxrlab-mrnet-plane"
PLANE_VERSION = 1


def save_plane_checkpoint(path: str | os.PathLike, net: PlaneNet, meta: dict[str, Any]) -> Path:
    """Write a plane network and its metadata (task, plane, input size, normalization,
    histogram landmarks, validation metrics) atomically; ``torch.load(weights_only=True)`` reads it.

    File layout: ``{"format": "cxrlab-mrnet-plane", "version": 1, "meta_json": str, "state_dict": {...}}``.
    """
    full = {**meta, "arch": net.arch}
    payload = {"format": PLANE_FORMAT, "version": PLANE_VERSION,
               "meta_json": json.dumps(full, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)),
               "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}}
    return atomic_torch_save(payload, path)


def load_plane_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                          ) -> tuple[PlaneNet, dict[str, Any]]:
    """Rebuild a plane network written by :func:`save_plane_checkpoint` (eval mode).

    Raises:
        MissingFileError: No such file.
        InputError: Not an MRNet plane checkpoint, or its weights do not fit its architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "plane checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, ValueError, EOFError, OSError, pickle.UnpicklingError) as err:
        raise InputError(path, f"cannot read checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("format") != PLANE_FORMAT:
        raise InputError(path, f"not a {PLANE_FORMAT} checkpoint")
    if payload.get("version") != PLANE_VERSION:
        raise InputError(path, f"checkpoint version {payload.get('version')!r}; this cxrlab reads {PLANE_VERSION}")
    meta = json.loads(payload["meta_json"])
    net = create_plane_net(meta["arch"], pretrained=None)
    try:
        net.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as err:
        raise InputError(path, f"weights do not fit {meta['arch']!r}: {str(err).splitlines()[0]}") from err
    return net.eval(), meta
