"""Seed 003 (SCXNN) networks: a classifier that also reconstructs the lesion region.

:class:`MultiTaskNet` is one per-disease model of the normal-screening ensemble: a timm
encoder (``features_only``; DenseNet-121 in the seed, any timm body here), a U-Net-like
decoder that reconstructs the image inside the dilated lesion mask, and a head that
classifies the image as *normal* / *target disease* / *other disease* (3 classes) or,
for the seed's 2-class ablation, *not target* / *target*.

:class:`SharedEncoderNet` is the variant beyond the seed: one encoder and one decoder,
and one small head per disease, so an image is encoded once instead of once per
disease. Both return ``(logits, reconstruction)``; at inference the decoder is skipped
(``reconstruct=False``): only the logits feed the SVM.

Checkpoints (:func:`save_multitask_checkpoint`) carry the construction arguments and
any metadata (diseases, preprocessing, normalization) as JSON text beside the weights,
so :func:`load_multitask_checkpoint` rebuilds the model from the file alone.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cxrlab.errors import ConfigError, InputError, MissingFileError
from cxrlab.models.classifier import imagenet_body
from cxrlab.models.registry import resolve_timm_name
from cxrlab.utils import atomic_torch_save

FORMAT = "cxrlab-multitask"
VERSION = 1
CLASS_NAMES = {3: ("normal", "target", "others"), 2: ("not_target", "target")}
"""Meaning of each logit for the 3-class head (seed 003) and the 2-class ablation."""
DEFAULT_DECODER_CHANNELS = (256, 128, 64, 32)


def create_encoder(name: str, in_chans: int = 1, pretrained: str | os.PathLike | None = None
                   ) -> nn.Module:
    """A timm body returning its feature maps at every stage (``features_only=True``).

    Args:
        name: Registry name (``densenet121``), any timm name or ``timm:NAME``.
        in_chans: Input channels (1 for gray radiographs).
        pretrained: None (random init), ``"imagenet"`` (timm download; needs the internet
            or a filled Hugging Face cache) or a local weights file (timm or torchvision
            layout; timm adapts the first convolution to ``in_chans``).

    Raises:
        ConfigError: Unknown architecture or a body without ``features_only`` support.
        MissingFileError: ``pretrained`` names a missing file.
        InputError: The file does not hold weights of this body.
        WeightsUnavailableError: ImageNet weights cannot be downloaded.
    """
    import timm

    timm_name = resolve_timm_name(name)
    kwargs: dict[str, Any] = {"features_only": True, "in_chans": in_chans}
    try:
        if pretrained is None:
            return timm.create_model(timm_name, pretrained=False, **kwargs)
        if str(pretrained) == "imagenet":
            return imagenet_body(name, timm_name, kwargs)
        path = Path(pretrained)
        if not path.is_file():
            raise MissingFileError(path, "pretrained weights file not found; pass 'imagenet' or a "
                                         "path to a timm/torchvision state dict")
        try:
            return timm.create_model(timm_name, pretrained=True,
                                     pretrained_cfg_overlay={"file": str(path)}, **kwargs)
        except (RuntimeError, KeyError, ValueError, EOFError, pickle.UnpicklingError) as err:
            raise InputError(path, f"weights do not fit {timm_name!r}: {str(err)[:300]}") from err
    except (TypeError, AttributeError) as err:  # bodies without feature extraction
        raise ConfigError("model.encoder", f"{name!r} cannot return intermediate features "
                                           f"(timm features_only): {err}") from err


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by BatchNorm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
        )


class UNetDecoder(nn.Module):
    """U-Net-like decoder over an encoder's feature pyramid.

    Starting from the deepest feature map, each block upsamples to the next shallower
    feature map's size, concatenates it (skip connection) and applies :class:`ConvBlock`;
    the result (at the shallowest feature map's resolution, 1/2 of the input for
    DenseNet/ResNet bodies) is upsampled bilinearly to the input size and a 3x3
    convolution gives ``out_chans`` maps (no activation: the reconstruction is regressed
    with MSE).

    Args:
        encoder_channels: Channels of the encoder's feature maps, shallow to deep.
        decoder_channels: Channels of the blocks, deep to shallow; the first
            ``len(encoder_channels) - 1`` values are used.
        out_chans: Output channels (1: the gray image).

    Shape:
        - Input: a list of ``(B, C_i, H_i, W_i)`` and the output size ``(H, W)``.
        - Output: ``(B, out_chans, H, W)``.
    """

    def __init__(self, encoder_channels: Sequence[int],
                 decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
                 out_chans: int = 1) -> None:
        super().__init__()
        encoder_channels = [int(c) for c in encoder_channels]
        decoder_channels = [int(c) for c in decoder_channels]
        needed = max(len(encoder_channels) - 1, 1)
        if len(decoder_channels) < needed or min(decoder_channels) < 1:
            raise ConfigError("model.decoder_channels",
                              f"need at least {needed} positive values (one per skip "
                              f"connection), got {decoder_channels}")
        skips = encoder_channels[-2::-1]           # shallower maps, deep to shallow
        blocks = []
        in_ch = encoder_channels[-1]
        for k, skip in enumerate(skips):
            blocks.append(ConvBlock(in_ch + skip, decoder_channels[k]))
            in_ch = decoder_channels[k]
        self.blocks = nn.ModuleList(blocks)
        self.out = nn.Conv2d(in_ch, out_chans, 3, padding=1)

    def forward(self, features: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        x = features[-1]
        for block, skip in zip(self.blocks, list(features[-2::-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = block(torch.cat([x, skip], dim=1))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.out(x)


class _EncoderDecoder(nn.Module):
    """Encoder + decoder + pooled feature vector shared by both networks."""

    def __init__(self, encoder: str, in_chans: int, pretrained: str | os.PathLike | None,
                 decoder_channels: Sequence[int], dropout: float) -> None:
        super().__init__()
        if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
            raise ConfigError("model.dropout", f"must be in [0, 1), got {dropout!r}")
        self.encoder = create_encoder(encoder, in_chans, pretrained)
        channels = list(self.encoder.feature_info.channels())
        self.decoder = UNetDecoder(channels, decoder_channels, out_chans=1)
        self.num_features = channels[-1]
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self._config = {"encoder": encoder, "in_chans": int(in_chans),
                        "decoder_channels": [int(c) for c in decoder_channels],
                        "dropout": float(dropout)}

    def _encode(self, x: torch.Tensor, reconstruct: bool
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        features = self.encoder(x)
        pooled = self.dropout(features[-1].mean(dim=(2, 3)))
        recon = self.decoder(features, x.shape[-2:]) if reconstruct else None
        return pooled, recon

    def freeze_decoder(self, frozen: bool = True) -> None:
        """Stop (or restart) training the decoder: no gradients, BatchNorm statistics kept.

        The decoder is also kept in eval mode while frozen (see :meth:`train`).
        """
        self._decoder_frozen = frozen
        for param in self.decoder.parameters():
            param.requires_grad_(not frozen)
        self.train(self.training)

    def freeze_encoder(self, frozen: bool = True) -> None:
        """Freeze the encoder's parameters (BatchNorm statistics kept, eval mode)."""
        self._encoder_frozen = frozen
        for param in self.encoder.parameters():
            param.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> _EncoderDecoder:
        super().train(mode)
        if mode and getattr(self, "_decoder_frozen", False):
            self.decoder.eval()
        if mode and getattr(self, "_encoder_frozen", False):
            self.encoder.eval()
        return self

    @property
    def config(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this network (without pretrained weights)."""
        return dict(self._config)


class MultiTaskNet(_EncoderDecoder):
    """One per-disease screening model: encoder, reconstruction decoder, K-class head.

    Args:
        encoder: Body name (``densenet121`` in seed 003; any timm body).
        num_classes: 3 (normal / target / others, seed 003) or 2 (not target / target).
        in_chans: Input channels.
        pretrained: None, ``"imagenet"`` or a weights file (see :func:`create_encoder`).
        decoder_channels: Decoder widths, deep to shallow (:class:`UNetDecoder`).
        dropout: Dropout before the head's Linear layer.

    Shape:
        - Input: ``(B, in_chans, H, W)``.
        - Output: logits ``(B, num_classes)`` and the reconstruction ``(B, 1, H, W)``
          (``None`` with ``reconstruct=False``).

    Example:
        >>> net = MultiTaskNet("resnet18", decoder_channels=(32, 16, 8, 8))
        >>> logits, recon = net(torch.zeros(2, 1, 64, 64))
        >>> tuple(logits.shape), tuple(recon.shape)
        ((2, 3), (2, 1, 64, 64))
    """

    def __init__(self, encoder: str = "densenet121", num_classes: int = 3, in_chans: int = 1,
                 pretrained: str | os.PathLike | None = None,
                 decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
                 dropout: float = 0.0) -> None:
        _check_classes(num_classes)
        super().__init__(encoder, in_chans, pretrained, decoder_channels, dropout)
        self.num_classes = int(num_classes)
        self.head = nn.Linear(self.num_features, self.num_classes)
        self._config["num_classes"] = self.num_classes

    def forward(self, x: torch.Tensor, reconstruct: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        pooled, recon = self._encode(x, reconstruct)
        return self.head(pooled), recon


class SharedEncoderNet(_EncoderDecoder):
    """Shared-encoder variant: one encoder and decoder, one K-class head per disease.

    The decoder reconstructs the image inside the union of every configured disease's
    dilated lesion mask; each head answers normal / this disease / another disease.

    Args:
        diseases: Disease names, one head each (the order of the logits).
        encoder, num_classes, in_chans, pretrained, decoder_channels, dropout: As
            :class:`MultiTaskNet`.

    Shape:
        - Input: ``(B, in_chans, H, W)``.
        - Output: logits ``(B, D, num_classes)`` and the reconstruction ``(B, 1, H, W)``.
    """

    def __init__(self, diseases: Sequence[str], encoder: str = "densenet121",
                 num_classes: int = 3, in_chans: int = 1,
                 pretrained: str | os.PathLike | None = None,
                 decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
                 dropout: float = 0.0) -> None:
        _check_classes(num_classes)
        diseases = [str(d) for d in diseases]
        if not diseases or len(set(diseases)) != len(diseases):
            raise ConfigError("model.diseases", f"need distinct disease names, got {diseases}")
        super().__init__(encoder, in_chans, pretrained, decoder_channels, dropout)
        self.diseases = diseases
        self.num_classes = int(num_classes)
        # one Linear for all heads: the D heads are its D row blocks
        self.heads = nn.Linear(self.num_features, len(diseases) * self.num_classes)
        self._config.update(num_classes=self.num_classes, diseases=list(diseases))

    def forward(self, x: torch.Tensor, reconstruct: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        pooled, recon = self._encode(x, reconstruct)
        logits = self.heads(pooled).view(x.shape[0], len(self.diseases), self.num_classes)
        return logits, recon


def _check_classes(num_classes: int) -> None:
    if num_classes not in CLASS_NAMES:
        raise ConfigError("model.num_classes", f"must be 3 (normal/target/others) or 2 "
                                               f"(not target/target), got {num_classes!r}")


def build_network(config: Mapping[str, Any]) -> MultiTaskNet | SharedEncoderNet:
    """Rebuild a network from its :attr:`config` (``diseases`` present = shared variant)."""
    config = dict(config)
    try:
        if "diseases" in config:
            return SharedEncoderNet(**config)
        return MultiTaskNet(**config)
    except TypeError as err:
        raise ConfigError("model", f"cannot build a network from {config}: {err}") from err


def save_multitask_checkpoint(path: str | os.PathLike, model: MultiTaskNet | SharedEncoderNet,
                              meta: Mapping[str, Any] | None = None) -> Path:
    """Write weights, construction arguments and ``meta`` (JSON-serializable) atomically."""
    payload = {"format": FORMAT, "version": VERSION,
               "config_json": json.dumps(model.config),
               "meta_json": json.dumps(dict(meta or {}), default=_json_default),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    return atomic_torch_save(payload, path)


def load_multitask_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                              ) -> tuple[MultiTaskNet | SharedEncoderNet, dict[str, Any]]:
    """Rebuild a network saved by :func:`save_multitask_checkpoint`; returns ``(model, meta)``.

    Raises:
        MissingFileError: No such file.
        InputError: Not a cxrlab multi-task checkpoint, or the weights do not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "screening model checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:
        raise InputError(path, f"cannot read checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(path, f"not a {FORMAT} checkpoint")
    model = build_network(json.loads(payload["config_json"]))
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as err:
        raise InputError(path, f"weights do not fit the stored architecture: {err}") from err
    return model, json.loads(payload["meta_json"])


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")

