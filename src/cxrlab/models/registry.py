"""Named classifier bodies: the architectures of seed 001 (and seed 002's gate) by name.

A registry entry maps the name used in recipes (``resnet50``, ``efficientnet_b3``, ...)
to the timm model that reproduces the body the seed trained, with the facts Table 3.2 of
seed 001 gives about it. Any other timm name works too: :func:`resolve_timm_name` passes
it through unchanged (``timm:NAME`` bypasses the registry for a name it also holds).

Which timm models, and why:

* ResNet-50/152, DenseNet-121/161 and ResNeXt-50 (32x4d) were torchvision models in the
  seeds (fastai's ``cnn_learner``). timm's ``<name>.tv_in1k`` tags are torchvision's
  ImageNet weights (top-1 76.1 / 78.3 / 74.4 / 77.1 as in Table 3.2); the bodies have the
  same parameter counts as torchvision's without ``fc``/``classifier``.
* EfficientNet-B0..B5 came from lukemelas/EfficientNet-PyTorch, a port of the TensorFlow
  models: "same" padding and BatchNorm eps 1e-3. timm's ``tf_efficientnet_bN`` is that
  port (timm's own ``efficientnet_bN`` has the same parameter count but symmetric
  padding, eps 1e-5 and other weights, and only ImageNet-12k-pretrained weights for B5). The ``.in1k``
  tag holds the TF-ported ImageNet weights.

Both EfficientNet families reproduce Table 3.2's body counts exactly (checked in
``tests/models/test_parameter_counts.py``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from cxrlab.errors import ConfigError

TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class ArchSpec:
    """One registered body.

    Attributes:
        name: The recipe name (``"resnet50"``).
        timm_name: What :func:`timm.create_model` is called with, tag included.
        family: ``"resnet"``, ``"densenet"``, ``"efficientnet"`` or ``"resnext"``.
        pretrain_resolution: Side of the ImageNet pretraining images (Table 3.2).
        experiment_resolutions: Image sides seed 001 trained this body on (all five for
            ResNet/DenseNet, one per EfficientNet); empty for bodies outside seed 001.
        imagenet_top1: ImageNet top-1 accuracy quoted by seed 001 Table 3.2, or None.
        source: Where the entry comes from.
    """

    name: str
    timm_name: str
    family: str
    pretrain_resolution: int
    experiment_resolutions: tuple[int, ...]
    imagenet_top1: float | None
    source: str


SEED001_RESOLUTIONS: tuple[int, ...] = (160, 240, 320, 400, 480)

EFFICIENTNET_FOR_RESOLUTION: dict[int, str] = {
    160: "efficientnet_b0",
    240: "efficientnet_b1",
    320: "efficientnet_b3",
    400: "efficientnet_b4",
    480: "efficientnet_b5",
}
"""Seed 001 Table 3.2: the EfficientNet variant trained at each experiment image side."""

_T32 = "seed 001 Table 3.2"

ARCHITECTURES: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        ArchSpec("resnet50", "resnet50.tv_in1k", "resnet", 224, SEED001_RESOLUTIONS, 76.1, _T32),
        ArchSpec("resnet152", "resnet152.tv_in1k", "resnet", 224, SEED001_RESOLUTIONS, 78.3, _T32),
        ArchSpec("densenet121", "densenet121.tv_in1k", "densenet", 224, SEED001_RESOLUTIONS, 74.4, _T32),
        ArchSpec("densenet161", "densenet161.tv_in1k", "densenet", 224, SEED001_RESOLUTIONS, 77.1, _T32),
        ArchSpec("efficientnet_b0", "tf_efficientnet_b0.in1k", "efficientnet", 224, (160,), 76.3, _T32),
        ArchSpec("efficientnet_b1", "tf_efficientnet_b1.in1k", "efficientnet", 240, (240,), 78.8, _T32),
        ArchSpec("efficientnet_b3", "tf_efficientnet_b3.in1k", "efficientnet", 300, (320,), 81.1, _T32),
        ArchSpec("efficientnet_b4", "tf_efficientnet_b4.in1k", "efficientnet", 380, (400,), 82.6, _T32),
        ArchSpec("efficientnet_b5", "tf_efficientnet_b5.in1k", "efficientnet", 456, (480,), 83.3, _T32),
        ArchSpec("resnext50_32x4d", "resnext50_32x4d.tv_in1k", "resnext", 224, (), None,
                 "seed 002 Table 4.3 (gate classifier)"),
    )
}

SEED001_ARCHITECTURES: tuple[str, ...] = tuple(
    name for name, spec in ARCHITECTURES.items() if spec.experiment_resolutions
)


def list_architectures() -> list[str]:
    """Registered names, in the order of seed 001 Table 3.2 (then seed 002's ResNeXt)."""
    return list(ARCHITECTURES)


def get_architecture(name: str) -> ArchSpec | None:
    """The registry entry for ``name``, or None for a plain timm name."""
    return ARCHITECTURES.get(name)


def resolve_timm_name(name: str) -> str:
    """The timm model name (with pretrained tag where the registry fixes one) for ``name``.

    Args:
        name: A registry name, any name :func:`timm.create_model` accepts, or
            ``timm:NAME`` to use timm's model of that name even where the registry maps
            the name elsewhere (``timm:efficientnet_b0`` is timm's own EfficientNet-B0).

    Raises:
        ConfigError: timm knows no model of that name (the message suggests close ones).
    """
    import timm

    if name.startswith(TIMM_PREFIX):
        candidate = name[len(TIMM_PREFIX):]
    elif name in ARCHITECTURES:
        return ARCHITECTURES[name].timm_name
    else:
        candidate = name
    if not timm.is_model(candidate):
        known = list(dict.fromkeys(list(ARCHITECTURES) + timm.list_models()))
        close = difflib.get_close_matches(candidate, known, n=5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError("model.arch", f"unknown architecture {name!r} (neither in the cxrlab registry "
                                        f"nor a timm model){hint}")
    return candidate


def efficientnet_for_resolution(size: int) -> str:
    """The EfficientNet seed 001 paired with an experiment image side (Table 3.2).

    Raises:
        ConfigError: ``size`` is not one of seed 001's resolutions (160, 240, 320, 400, 480).
    """
    if size not in EFFICIENTNET_FOR_RESOLUTION:
        raise ConfigError("data.size", f"seed 001 paired EfficientNets with sizes "
                                       f"{sorted(EFFICIENTNET_FOR_RESOLUTION)} only, got {size}")
    return EFFICIENTNET_FOR_RESOLUTION[size]
