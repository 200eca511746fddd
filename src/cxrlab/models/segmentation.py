"""U-Nets from segmentation_models_pytorch over any smp or timm encoder, and their checkpoints.

Seed 002's U-Nets (baseline and "One Case") use a ResNet34 encoder and a two-channel
output (background / pneumothorax) whose argmax is the mask. :func:`create_unet` builds
that by default; ``encoder`` may be any smp encoder name (``resnet34``,
``efficientnet-b0``, ...), any timm model (``tu-convnext_tiny``, or the plain timm name,
which is prefixed with ``tu-`` when smp has no encoder of that name), with 1 or 3 input
channels.

Pretrained weights (like :func:`cxrlab.models.create_classifier`): ``None`` (random),
``"imagenet"`` (downloaded through the Hugging Face hub; offline this raises
:class:`~cxrlab.errors.WeightsUnavailableError` naming both ways out) or a path to a
local state dict of the encoder (smp, timm or torchvision; the ImageNet classifier is
dropped and the first convolution adapted to ``in_chans``).

Checkpoints (``torch.save`` of a dict, ``weights_only`` readable)::

    {"format": "cxrlab-segmenter", "version": 1, "meta_json": "<JSON>", "state_dict": {...}}
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import pickle
from collections.abc import Iterator, Mapping
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
from cxrlab.models.classifier import BodyHeadModule
from cxrlab.models.weights import _json_default
from cxrlab.utils import atomic_torch_save

log = logging.getLogger(__name__)

FORMAT = "cxrlab-segmenter"
VERSION = 1
TIMM_PREFIX = "tu-"
DEFAULT_DECODER_CHANNELS: tuple[int, ...] = (256, 128, 64, 32, 16)
IMAGENET = "imagenet"


class SegmentationModel(BodyHeadModule):
    """An smp U-Net with the encoder/decoder split the training engine needs.

    ``body`` is the encoder and ``head`` the decoder plus segmentation head, the names
    :func:`cxrlab.engine.optim.param_groups` uses for discriminative learning rates and
    freezing (seed 002: 6 epochs with the encoder frozen, then 12 unfrozen).

    Attributes:
        unet: The ``segmentation_models_pytorch.Unet``.
        encoder_name: The smp encoder name (``tu-`` prefixed for timm bodies).
        in_chans, classes, decoder_channels, encoder_depth: Construction arguments.
    """

    def __init__(self, unet: nn.Module, *, encoder_name: str, in_chans: int, classes: int,
                 decoder_channels: tuple[int, ...], encoder_depth: int) -> None:
        super().__init__()
        self.unet = unet
        self.encoder_name = encoder_name
        self.in_chans = in_chans
        self.classes = classes
        self.decoder_channels = tuple(decoder_channels)
        self.encoder_depth = encoder_depth

    @property
    def config(self) -> dict[str, Any]:
        """Arguments that rebuild this model with :func:`create_unet`."""
        return {"encoder": self.encoder_name, "in_chans": self.in_chans, "classes": self.classes,
                "decoder_channels": list(self.decoder_channels), "encoder_depth": self.encoder_depth}

    @property
    def body(self) -> nn.Module:
        """The encoder."""
        return self.unet.encoder

    @property
    def head(self) -> nn.Module:
        """Decoder and segmentation head (a view; not registered twice)."""
        return nn.ModuleList([self.unet.decoder, self.unet.segmentation_head])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, classes, H, W)``; H and W must be multiples of ``2 ** encoder_depth``."""
        return self.unet(x)


def foreground_logits(output: torch.Tensor) -> torch.Tensor:
    """One foreground logit per pixel, ``(B, 1, H, W)``.

    A two-channel output becomes ``z1 - z0``: its sigmoid is the softmax probability of
    class 1, so binary losses train the two-channel model exactly as softmax would, and
    ``argmax`` equals ``sigmoid(z1 - z0) > 0.5``. A one-channel output is returned as is.

    Raises:
        InputError: Not ``(B, 1|2, H, W)``.
    """
    if output.ndim != 4 or output.shape[1] not in (1, 2):
        raise InputError(None, f"expected (B, 1, H, W) or (B, 2, H, W) logits, got {tuple(output.shape)}")
    if output.shape[1] == 1:
        return output
    return output[:, 1:2] - output[:, 0:1]


def foreground_probability(output: torch.Tensor) -> torch.Tensor:
    """Foreground probability ``(B, 1, H, W)`` (softmax class 1, or sigmoid of one channel)."""
    return torch.sigmoid(foreground_logits(output).float())


def resolve_encoder(name: str) -> str:
    """The smp encoder name for ``name`` (smp names as they are, other timm names as ``tu-NAME``).

    Raises:
        ConfigError: Neither smp nor timm knows the name.
    """
    import segmentation_models_pytorch as smp
    import timm

    smp_names = smp.encoders.get_encoder_names()
    if name in smp_names:
        return name
    candidate = name[len(TIMM_PREFIX):] if name.startswith(TIMM_PREFIX) else name
    if timm.is_model(candidate):
        return TIMM_PREFIX + candidate
    close = difflib.get_close_matches(candidate, smp_names + timm.list_models(), n=5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConfigError("segmentation.encoder", f"unknown encoder {name!r} (neither an smp encoder nor a "
                                              f"timm model){hint}")


def create_unet(encoder: str = "resnet34", in_chans: int = 3, classes: int = 2,
                pretrained: str | os.PathLike | None = None,
                decoder_channels: tuple[int, ...] | list[int] = DEFAULT_DECODER_CHANNELS,
                encoder_depth: int | None = None) -> SegmentationModel:
    """Build a U-Net (seed 002: ResNet34 encoder, two output channels).

    Args:
        encoder: smp encoder name, ``tu-<timm name>`` or a plain timm name.
        in_chans: 1 (gray) or 3 (the gray image repeated, for ImageNet encoders).
        classes: 2 (softmax background/foreground, seed 002's argmax) or 1 (sigmoid).
        pretrained: None, ``"imagenet"`` or a path to a local encoder state dict.
        decoder_channels: Channels of the decoder blocks, one per encoder stage used.
        encoder_depth: Encoder stages (3-5); default ``len(decoder_channels)``.

    Raises:
        ConfigError: Unknown encoder, bad channels/classes/depth.
        MissingFileError: ``pretrained`` names a missing file.
        InputError: The weights file is unreadable or does not fit the encoder.
        WeightsUnavailableError: ImageNet weights cannot be downloaded (offline).

    Example:
        >>> model = create_unet("resnet18", in_chans=1)
        >>> model(torch.zeros(2, 1, 64, 64)).shape
        torch.Size([2, 2, 64, 64])
    """
    import segmentation_models_pytorch as smp

    if in_chans not in (1, 3):
        raise ConfigError("segmentation.in_chans", f"must be 1 or 3, got {in_chans!r}")
    if classes not in (1, 2):
        raise ConfigError("segmentation.classes", f"must be 1 (sigmoid) or 2 (softmax), got {classes!r}")
    decoder_channels = tuple(int(c) for c in decoder_channels)
    depth = len(decoder_channels) if encoder_depth is None else int(encoder_depth)
    if not 3 <= depth <= 5 or len(decoder_channels) != depth:
        raise ConfigError("segmentation.decoder_channels",
                          f"need one decoder channel count per encoder stage (depth 3-5); got depth {depth} "
                          f"and {list(decoder_channels)}")
    name = resolve_encoder(encoder)
    weights: Any = None
    if isinstance(pretrained, str) and pretrained == IMAGENET:
        weights = True if name.startswith(TIMM_PREFIX) else IMAGENET
    kwargs = {"encoder_name": name, "in_channels": in_chans, "classes": classes,
              "decoder_channels": decoder_channels, "encoder_depth": depth}
    if weights is not None:
        unet = _download(name, kwargs, weights)
    else:
        unet = smp.Unet(encoder_weights=None, **kwargs)
        if pretrained is not None:
            load_encoder_weights(unet.encoder, pretrained, in_chans)
    return SegmentationModel(unet, encoder_name=name, in_chans=in_chans, classes=classes,
                             decoder_channels=decoder_channels, encoder_depth=depth)


def _download(name: str, kwargs: dict[str, Any], weights: Any) -> nn.Module:
    import segmentation_models_pytorch as smp

    both = ("Either connect to the internet (with HF_HUB_OFFLINE unset or 0) so the weights can be "
            "downloaded, or download the encoder's ImageNet weights elsewhere (smp/timm/torchvision "
            "state dict) and pass pretrained=PATH (segmentation.pretrained=PATH in a recipe)")
    try:
        return smp.Unet(encoder_weights=weights, **kwargs)
    except OSError as err:  # hub/HTTP errors and offline cache misses are OSErrors
        first = str(err).splitlines()[0] if str(err) else ""
        raise WeightsUnavailableError(f"cannot download ImageNet weights for encoder {name!r}: "
                                      f"{type(err).__name__}: {first}. {both}") from err
    except (KeyError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and "pretrained" not in str(err).lower():
            raise
        raise WeightsUnavailableError(f"no ImageNet weights are published for encoder {name!r} ({err}); "
                                      "use pretrained=None or pretrained=PATH to a local weights file") from err


_PREFIXES = ("model.unet.encoder.", "unet.encoder.", "encoder.", "model.body.", "body.", "module.")


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, ValueError, EOFError, OSError, pickle.UnpicklingError) as err:
        raise InputError(path, f"cannot read weights ({type(err).__name__}: {err})") from err
    if isinstance(state, Mapping) and state.get("format") == FORMAT:
        state = state.get("state_dict")
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise InputError(path, "not a state dict of tensors")
    return dict(state)


def _candidates(state: dict[str, torch.Tensor], timm_body: bool) -> Iterator[dict[str, torch.Tensor]]:
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            break
    yield state
    if timm_body:   # TimmUniversalEncoder keeps the timm features model under ``model.``
        yield {f"model.{k}": v for k, v in state.items()}
        yield {"model." + k.replace(".", "_", 1) if k.split(".", 1)[0].isidentifier() else k: v
               for k, v in state.items()}


def load_encoder_weights(encoder: nn.Module, path: str | os.PathLike, in_chans: int) -> None:
    """Load a local state dict into an smp encoder.

    Accepts an smp encoder state dict, a timm/torchvision ImageNet file (classifier keys
    dropped) or a cxrlab segmentation checkpoint (its ``unet.encoder.*`` weights). A first
    convolution stored for another number of input channels is adapted with
    :func:`timm.models.adapt_input_conv` (RGB summed for one channel).

    Raises:
        MissingFileError: ``path`` does not exist.
        InputError: Unreadable file, or keys/shapes that do not fit the encoder.
    """
    from timm.models import adapt_input_conv

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "pretrained encoder weights not found; pass pretrained='imagenet' to "
                                     "download them or a path to an smp/timm/torchvision state dict")
    raw = _read_state(path)
    expected = encoder.state_dict()
    problems = ""
    for state in _candidates(raw, timm_body=hasattr(encoder, "model")):
        for key, value in list(state.items()):
            target = expected.get(key)
            if (target is not None and value.ndim == 4 and target.ndim == 4 and value.shape[1] != target.shape[1]
                    and target.shape[1] == in_chans and value.shape[0] == target.shape[0]):
                state[key] = adapt_input_conv(in_chans, value)
        missing = [k for k in expected if k not in state]
        shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                  for k in expected if k in state and state[k].shape != expected[k].shape]
        if not (missing or shapes):
            # keys beyond the encoder (ImageNet head, stages past encoder_depth) are dropped
            unused = [k for k in state if k not in expected]
            if unused:
                log.info("%s: %d weights not used by the encoder (e.g. %s)", path, len(unused), unused[0])
            encoder.load_state_dict({k: state[k] for k in expected}, strict=True)
            return
        parts = [f"{label}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
                 for label, items in (("missing", missing), ("shape", shapes)) if items]
        problems = "; ".join(parts)
    raise InputError(path, f"weights do not fit encoder {type(encoder).__name__} ({problems})")


def save_segmentation_checkpoint(path: str | os.PathLike, model: SegmentationModel,
                                 meta: Mapping[str, Any]) -> Path:
    """Write weights and metadata (architecture from the model, plus ``meta``) atomically.

    Known meta keys: ``input_size``, ``preprocessing`` (``PreprocessConfig.to_dict()``),
    ``normalization``, ``threshold``, ``postprocess``, ``role`` (baseline / one_case).

    Raises:
        ConfigError: ``model`` is not a :class:`SegmentationModel`.
    """
    if not isinstance(model, SegmentationModel):
        raise ConfigError("model", f"expected a cxrlab SegmentationModel, got {type(model).__name__}")
    full = {**dict(meta), **model.config}
    payload = {"format": FORMAT, "version": VERSION, "meta_json": json.dumps(full, default=_json_default),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    return atomic_torch_save(payload, path)


def load_segmentation_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                                 ) -> tuple[SegmentationModel, dict[str, Any]]:
    """Rebuild a U-Net written by :func:`save_segmentation_checkpoint` (eval mode) and its metadata.

    Raises:
        MissingFileError: No such file.
        InputError: Not a cxrlab segmentation checkpoint, or weights that do not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "segmentation checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, ValueError, EOFError, OSError, pickle.UnpicklingError) as err:
        raise InputError(path, f"cannot read checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(path, f"not a {FORMAT} checkpoint (written by save_segmentation_checkpoint)")
    if payload.get("version") != VERSION:
        raise InputError(path, f"checkpoint version {payload.get('version')!r}; this cxrlab reads {VERSION}")
    meta = json.loads(payload["meta_json"])
    model = create_unet(meta["encoder"], in_chans=int(meta["in_chans"]), classes=int(meta["classes"]),
                        decoder_channels=tuple(meta["decoder_channels"]), encoder_depth=int(meta["encoder_depth"]))
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as err:
        raise InputError(path, f"weights do not fit {meta['encoder']!r}: {str(err).splitlines()[0]}") from err
    return model.eval(), meta
