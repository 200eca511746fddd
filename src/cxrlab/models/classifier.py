"""Image classifiers: a timm body and seed 001's fastai-style head (or a plain linear one).

The body is ``timm.create_model(name, num_classes=0, global_pool="")`` and returns its
last feature map; the head pools it and produces one logit per class (no sigmoid: the
losses take logits).

Seed 001 head (``head="concat"``), as fastai 2's ``create_head(nf, n_out, ps=dropout)``
builds it for ``cnn_learner``::

    AdaptiveConcatPool2d   max and average pooling, concatenated -> 2F features
    Flatten
    BatchNorm1d(2F)
    Dropout(dropout / 2)
    Linear(2F, 512, bias=False)
    ReLU
    BatchNorm1d(512)
    Dropout(dropout)
    Linear(512, K, bias=False)

fastai halves the single ``ps`` value for every layer but the last (``ps=0.6`` gives
Dropout 0.3 then 0.6: seed 001's "p-value of 0.6 in the linear layer of the head"), and
its ``LinBnDrop`` drops the Linear bias because a BatchNorm precedes each Linear. The
Linear weights get Kaiming-normal init with zero bias, BatchNorm weight 1 and bias 0
(fastai's ``apply_init(head, nn.init.kaiming_normal_)``).

Parameter counts: the head then has ``2*2F + 2F*512 + 2*512 + 512*K`` trainable
parameters. Seed 001 Table 3.3's head counts are exactly this with **K = 1** (one binary
model per pathology) and the last Linear **included**, e.g. ResNet-50 (F=2048):
8,192 + 2,097,152 + 1,024 + 512 = 2,106,880.

Unlike the lukemelas EfficientNet the seed used (whose body ended in an average pool,
making the head's concat pooling see a 1x1 map, as the seed itself notes), every body
here hands the head its full feature map.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import pickle
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from cxrlab.errors import (
    ConfigError,
    InputError,
    MissingFileError,
    WeightsUnavailableError,
)
from cxrlab.models.registry import resolve_timm_name

log = logging.getLogger(__name__)

HEADS: tuple[str, ...] = ("concat", "linear")
HIDDEN_FEATURES = 512
IMAGENET = "imagenet"

PretrainedArg = str | os.PathLike | None


class AdaptiveConcatPool2d(nn.Module):
    """Adaptive max and average pooling, concatenated on channels (fastai's order: max first).

    Shape:
        - Input: ``(B, C, H, W)`` for any H, W.
        - Output: ``(B, 2C, 1, 1)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.max_pool(x), self.avg_pool(x)], dim=1)


def concat_head(num_features: int, num_classes: int, dropout: float = 0.6) -> nn.Sequential:
    """Seed 001's head (module docstring): concat pooling, BN-Dropout-Linear(512)-ReLU, BN-Dropout-Linear(K)."""
    head = nn.Sequential(
        AdaptiveConcatPool2d(),
        nn.Flatten(),
        nn.BatchNorm1d(2 * num_features),
        nn.Dropout(dropout / 2),
        nn.Linear(2 * num_features, HIDDEN_FEATURES, bias=False),
        nn.ReLU(inplace=True),
        nn.BatchNorm1d(HIDDEN_FEATURES),
        nn.Dropout(dropout),
        nn.Linear(HIDDEN_FEATURES, num_classes, bias=False),
    )
    for module in head.modules():
        if isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight)
    return head


def linear_head(num_features: int, num_classes: int, dropout: float = 0.0) -> nn.Sequential:
    """Global average pooling, Dropout (when > 0), Linear(F, K) with bias (PyTorch's default init)."""
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(num_features, num_classes))
    return nn.Sequential(*layers)


class BodyHeadModule(nn.Module):
    """A model split into ``body`` and ``head`` (the classifier, the U-Net): the parameter groups
    for discriminative learning rates and the body freezing of seed 001 / seed 002.

    Subclasses provide ``body`` and ``head`` modules (attributes or properties).
    """

    _body_frozen = False
    _train_bn = True

    @property
    def body_frozen(self) -> bool:
        return self._body_frozen

    def body_parameters(self) -> Iterator[nn.Parameter]:
        """The body's parameters (all of them, frozen or not), for discriminative LRs."""
        return self.body.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """The head's parameters."""
        return self.head.parameters()

    def freeze_body(self, frozen: bool = True, train_bn: bool = True) -> None:
        """Freeze (or unfreeze) the body; the head always stays trainable.

        Args:
            frozen: True sets ``requires_grad=False`` on the body's parameters; False makes
                every body parameter trainable again.
            train_bn: While frozen, keep the body's BatchNorm layers trainable and in the
                model's mode (fastai's default, seed 001). False freezes them too and keeps
                them in eval mode. See :class:`Classifier`.
        """
        self._body_frozen = frozen
        self._train_bn = train_bn
        for module in self.body.modules():
            trainable = (not frozen) or (train_bn and isinstance(module, _BatchNorm))
            for param in module.parameters(recurse=False):
                param.requires_grad_(trainable)
        self.train(self.training)

    def train(self, mode: bool = True) -> BodyHeadModule:
        super().train(mode)
        if mode and self._body_frozen and not self._train_bn:
            for module in self.body.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self


class Classifier(BodyHeadModule):
    """A timm body and a classification head; ``forward`` returns logits ``[B, K]``.

    Build it with :func:`create_classifier`.

    Attributes:
        body: The timm model without classifier and global pooling (returns feature maps).
        head: :func:`concat_head` or :func:`linear_head`.
        num_features: Channels of the body's output (the head's input).
        arch: The name the classifier was created with (registry or timm name).
        timm_name: The timm model behind the body.
        num_classes, in_chans, head_type, dropout: The construction arguments.

    Freezing (:meth:`freeze_body`): seed 001 trained the head alone for one epoch with
    fastai's ``freeze()``, which keeps the body's BatchNorm layers trainable (their affine
    parameters learn and their running statistics follow the new data; fastai
    ``train_bn=True``). That is the default here, so a frozen body adapts its BatchNorm
    statistics from ImageNet to radiographs. With ``train_bn=False`` every body parameter is
    frozen and the body's BatchNorm layers stay in eval mode (running statistics unchanged)
    even after ``model.train()``, until :meth:`freeze_body` ``(False)``.
    """

    def __init__(self, body: nn.Module, head: nn.Module, num_features: int, *, arch: str, timm_name: str,
                 num_classes: int, in_chans: int, head_type: str, dropout: float) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.num_features = num_features
        self.arch = arch
        self.timm_name = timm_name
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.head_type = head_type
        self.dropout = dropout

    @property
    def config(self) -> dict[str, Any]:
        """The arguments that rebuild this classifier with :func:`create_classifier`."""
        return {"arch": self.arch, "num_classes": self.num_classes, "in_chans": self.in_chans,
                "head": self.head_type, "dropout": self.dropout}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K]`` for images ``[B, in_chans, H, W]`` (any H, W the body accepts)."""
        return self.head(_as_nchw(self.body(x), getattr(self.body, "output_fmt", "NCHW")))

def _as_nchw(features: torch.Tensor, output_fmt: str) -> torch.Tensor:
    """Feature maps as ``(B, C, H, W)``: NHWC bodies are permuted, token outputs ``(B, N, C)``
    become ``(B, C, N, 1)`` so both heads pool over the tokens."""
    if features.ndim == 4:
        return features.permute(0, 3, 1, 2) if output_fmt == "NHWC" else features
    if features.ndim == 3:
        return features.transpose(1, 2).unsqueeze(-1)
    if features.ndim == 2:
        return features[:, :, None, None]
    raise ConfigError("model.arch", f"the body returned features of shape {tuple(features.shape)}; "
                                    "the classifier heads need (B, C, H, W) or (B, N, C)")


def create_classifier(name: str, num_classes: int, in_chans: int = 3, head: str = "concat",
                      pretrained: PretrainedArg = None, dropout: float = 0.6) -> Classifier:
    """Build a classifier over the timm body ``name``.

    Args:
        name: Registry name (:mod:`cxrlab.models.registry`, e.g. ``"densenet121"``), any
            timm model name, or ``timm:NAME``.
        num_classes: Number of logits K (1 for one binary task, as in seed 001).
        in_chans: Input channels (1 for gray radiographs, 3 for ImageNet-style input).
        head: ``"concat"`` (seed 001's fastai-style head) or ``"linear"``.
        pretrained: None (random init), ``"imagenet"`` (timm's download; needs the
            internet or a filled Hugging Face cache) or a path to a local state dict from
            timm or torchvision (ImageNet classifier dropped, first conv adapted to
            ``in_chans``; see :func:`load_body_weights`). The head is always new.
        dropout: Head dropout p (concat: p/2 then p; linear: p before the Linear).

    Raises:
        ConfigError: Unknown architecture or head, or an invalid number.
        MissingFileError: ``pretrained`` names a file that does not exist.
        InputError: The weights file is unreadable or holds another architecture.
        WeightsUnavailableError: ImageNet weights cannot be downloaded (offline).

    Example:
        >>> model = create_classifier("resnet50", num_classes=5, in_chans=1)
        >>> model(torch.zeros(2, 1, 64, 64)).shape
        torch.Size([2, 5])
    """
    if head not in HEADS:
        raise ConfigError("model.head", f"unknown head {head!r}; choose from {HEADS}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ConfigError("model.num_classes", f"must be a positive integer, got {num_classes!r}")
    if isinstance(in_chans, bool) or not isinstance(in_chans, numbers.Integral) or in_chans < 1:
        raise ConfigError("model.in_chans", f"must be a positive integer, got {in_chans!r}")
    if isinstance(dropout, bool) or not (isinstance(dropout, numbers.Real) and 0.0 <= dropout < 1.0):
        raise ConfigError("model.dropout", f"must be in [0, 1), got {dropout!r}")
    if pretrained is not None and not isinstance(pretrained, (str, os.PathLike)):
        raise ConfigError("model.pretrained", f"must be null, 'imagenet' or a path, got {pretrained!r}")
    timm_name = resolve_timm_name(name)
    kwargs: dict[str, Any] = {"num_classes": 0, "global_pool": "", "in_chans": int(in_chans)}
    body = create_body(name, timm_name, kwargs, pretrained, int(in_chans))
    num_features = int(body.num_features)
    make_head = concat_head if head == "concat" else linear_head
    num_classes, in_chans = int(num_classes), int(in_chans)
    return Classifier(body, make_head(num_features, num_classes, float(dropout)), num_features,
                      arch=name, timm_name=timm_name, num_classes=num_classes, in_chans=in_chans,
                      head_type=head, dropout=float(dropout))


def create_body(name: str, timm_name: str, kwargs: dict[str, Any], pretrained: str | os.PathLike | None,
                in_chans: int) -> nn.Module:
    """A timm feature body with random, ImageNet (``"imagenet"``) or local-file weights.

    Args:
        name: The architecture as the user wrote it (for messages).
        timm_name: The resolved timm model name.
        kwargs: Extra ``timm.create_model`` arguments (``num_classes=0`` etc.).
        pretrained: None (random), ``"imagenet"`` or a path to a local weights file.
        in_chans: Input channels (local weights are adapted to them).

    Raises:
        WeightsUnavailableError: ImageNet weights cannot be downloaded (offline).
        MissingFileError, InputError: The local file is missing or does not fit.
    """
    import timm

    if isinstance(pretrained, str) and pretrained == IMAGENET:
        return imagenet_body(name, timm_name, kwargs)
    body = timm.create_model(timm_name, pretrained=False, **kwargs)
    if pretrained is not None:
        load_body_weights(body, pretrained, in_chans)
    return body


def imagenet_body(name: str, timm_name: str, kwargs: dict[str, Any]) -> nn.Module:
    """timm body with ImageNet weights, or :class:`WeightsUnavailableError` saying how to go offline."""
    import timm


    try:
        return timm.create_model(timm_name, pretrained=True, **kwargs)
    except OSError as err:  # hub/HTTP/URL errors and the offline cache miss are all OSErrors
        raise WeightsUnavailableError(
            f"cannot download ImageNet weights for {name!r} (timm model {timm_name!r}): "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. Either connect to the "
            "internet (with HF_HUB_OFFLINE unset or 0) so timm can download them, or download "
            f"the weights elsewhere (timm {timm_name!r} or the torchvision equivalent) and pass "
            "pretrained=PATH to the local file (model.pretrained=PATH in a recipe)") from err
    except RuntimeError as err:
        if "No pretrained weights" not in str(err):
            raise
        raise WeightsUnavailableError(
            f"timm has no ImageNet weights for {timm_name!r}; use pretrained=None (random init) "
            "or pretrained=PATH to a local weights file") from err


def load_body_weights(body: nn.Module, path: str | os.PathLike, in_chans: int) -> None:
    """Load a local state dict into a timm body built with ``num_classes=0``.

    Accepts timm and torchvision ImageNet files (``.pth``/``.bin``/``.safetensors``, plain
    or under ``state_dict``/``model``), a cxrlab classifier checkpoint (its ``body.*``
    weights) and Lightning checkpoints (``model.body.*``). The ImageNet classifier
    (``fc``/``classifier``...) is dropped; a first convolution stored for another number
    of channels is adapted with :func:`timm.models.adapt_input_conv` (RGB summed for one
    channel); torchvision key layouts timm remaps (DenseNet's ``norm.1``) are remapped.

    Raises:
        MissingFileError: ``path`` does not exist.
        InputError: The file is not a readable state dict, or its keys or shapes do not
            fit this body (the message lists the first differences).
    """
    from timm.models import load_state_dict

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "pretrained weights file not found; pass pretrained='imagenet' to "
                                     "download timm's weights or a path to a timm/torchvision state dict")
    try:
        state = load_state_dict(str(path), weights_only=True)
    except (RuntimeError, ValueError, EOFError, OSError, pickle.UnpicklingError) as err:
        raise InputError(path, f"cannot read weights ({type(err).__name__}: {err})") from err
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise InputError(path, "not a state dict of tensors")
    state = _select_body_keys(dict(state))
    expected = body.state_dict()
    problems = ""
    for candidate in _candidate_layouts(state, body):
        candidate = _fit_to_body(candidate, body, in_chans)
        problems = _mismatch(candidate, expected)
        if not problems:
            body.load_state_dict(candidate, strict=True)
            return
    raise InputError(path, f"weights do not fit {type(body).__name__} ({problems}); the file holds "
                           "another architecture or variant")


def _select_body_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in ("model.body.", "body."):
        if any(key.startswith(prefix) for key in state):
            return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    return state


def _candidate_layouts(state: dict[str, torch.Tensor], body: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """The state as stored, then as the body's timm module would remap a foreign checkpoint."""
    yield state
    module = sys.modules.get(type(body).__module__)
    filters: list[Callable[[dict], dict]] = []
    if module is not None:
        if callable(getattr(module, "checkpoint_filter_fn", None)):
            filters.append(lambda sd: module.checkpoint_filter_fn(sd, body))
        if callable(getattr(module, "_filter_torchvision_pretrained", None)):
            filters.append(module._filter_torchvision_pretrained)
    for remap in filters:
        try:
            yield remap(dict(state))
        except (KeyError, RuntimeError, ValueError, IndexError, AttributeError) as err:
            log.debug("checkpoint filter %s did not apply: %s", remap, err)


def _names(value: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _fit_to_body(state: dict[str, torch.Tensor], body: nn.Module, in_chans: int) -> dict[str, torch.Tensor]:
    from timm.models import adapt_input_conv

    cfg = getattr(body, "pretrained_cfg", None) or {}
    expected = body.state_dict()
    classifiers = _names(cfg.get("classifier"))
    state = {k: v for k, v in state.items()
             if k in expected or not any(k == c or k.startswith(c + ".") for c in classifiers)}
    # BatchNorm's num_batches_tracked counter is no weight: files from before PyTorch 0.4.1
    # (torchvision's DenseNet downloads) lack it, and remapped layouts leave it behind.
    state = {k: v for k, v in state.items() if k in expected or not k.endswith(".num_batches_tracked")}
    for key, value in expected.items():
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value, device="cpu")
    for conv in _names(cfg.get("first_conv")):
        key = f"{conv}.weight"
        if key in state and key in expected and state[key].ndim == 4 and state[key].shape[1] != in_chans:
            state[key] = adapt_input_conv(in_chans, state[key])
    return state


def _mismatch(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
              for k in expected if k in state and state[k].shape != expected[k].shape]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            parts.append(f"{label}: {', '.join(items[:3])}{more}")
    return "; ".join(parts)


def count_parameters(name: str, num_classes: int = 1, in_chans: int = 3, head: str = "concat") -> dict[str, int]:
    """Trainable parameters of the body and the head, and the body's output features.

    Builds the classifier on the ``meta`` device (no weights are allocated), so even the
    largest bodies count in well under a second.

    Returns:
        ``{"body_params", "head_params", "num_features"}``. ``head_params`` includes the
        last Linear; seed 001 Table 3.3 is ``count_parameters(name, num_classes=1)``.
    """
    with torch.device("meta"):
        model = create_classifier(name, num_classes=num_classes, in_chans=in_chans, head=head)
    return {
        "body_params": _trainable(model.body_parameters()),
        "head_params": _trainable(model.head_parameters()),
        "num_features": model.num_features,
    }


def _trainable(params: Iterator[nn.Parameter]) -> int:
    return int(sum(math.prod(p.shape) for p in params if p.requires_grad))
