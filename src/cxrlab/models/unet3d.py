"""3D U-Nets for volume segmentation (MONAI) and their sliding-window inference.

:func:`create_unet3d` builds Weninger et al.'s network (seed 004 poster): padded
convolutions so input and output sizes match, instance norm, ReLU; either MONAI's ``UNet``
or the nnU-Net-style ``DynUNet``. :func:`sliding_window_logits` segments whole volumes with
MONAI's sliding window (Gaussian or constant blending) and optional flip TTA.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from cxrlab.errors import ConfigError

log = logging.getLogger(__name__)

UNET3D_ARCHS = ("unet", "dynunet")
FLIPS_3D: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4))
"""The 8 flips of the three spatial axes of a ``(B, C, x, y, z)`` batch."""


def create_unet3d(arch: str, in_channels: int, out_channels: int, channels: Sequence[int], strides: Sequence[int],
                  num_res_units: int = 0, dropout: float = 0.0) -> nn.Module:
    """A 3D U-Net with instance norm, ReLU and padded convolutions.

    Args:
        arch: ``unet`` (MONAI ``UNet``) or ``dynunet`` (``DynUNet``, 3x3x3 kernels).
        in_channels: Input channels (4 MR sequences for BraTS).
        out_channels: Classes (logits).
        channels: Feature maps per level.
        strides: Downsampling per level (one fewer than ``channels``).
        num_res_units: Residual units per block (``unet`` only; 0 = plain convolution blocks).
        dropout: Dropout probability.

    Raises:
        ConfigError: Unknown ``arch``.
    """
    if arch == "dynunet":
        from monai.networks.nets import DynUNet

        all_strides = [1, *strides]
        return DynUNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                       kernel_size=[3] * len(all_strides), strides=all_strides, upsample_kernel_size=list(strides),
                       filters=list(channels), norm_name="instance", act_name="relu", dropout=dropout or None)
    if arch != "unet":
        raise ConfigError("model.arch", f"unknown 3D U-Net {arch!r}; choose from {', '.join(UNET3D_ARCHS)}")
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, channels=tuple(channels),
                strides=tuple(strides), num_res_units=num_res_units, norm="instance", act="relu", dropout=dropout)


def sliding_window_logits(network: nn.Module, image: torch.Tensor, patch: Sequence[int], overlap: float = 0.5,
                          sw_batch_size: int = 2, mode: str = "gaussian", tta: bool = False) -> torch.Tensor:
    """Class logits ``(B, K, x, y, z)`` of whole volumes ``(B, C, x, y, z)`` by MONAI's sliding window.

    With ``tta`` the result is the log of the mean softmax over the 8 flips of the three axes.
    """
    from monai.inferers import sliding_window_inference

    def run(x: torch.Tensor) -> torch.Tensor:
        return sliding_window_inference(x, roi_size=list(patch), sw_batch_size=sw_batch_size, predictor=network,
                                        overlap=overlap, mode=mode)

    if not tta:
        return run(image)
    total = None
    for flips in FLIPS_3D:
        x = torch.flip(image, flips) if flips else image
        probs = torch.softmax(run(x).float(), dim=1)
        probs = torch.flip(probs, flips) if flips else probs
        total = probs if total is None else total + probs
    return torch.log(total / len(FLIPS_3D) + 1e-8)
