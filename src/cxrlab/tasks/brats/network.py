"""The 3D U-Net of the BraTS task (MONAI) and its sliding-window inference."""

from __future__ import annotations

import logging

import torch
from torch import nn

from cxrlab.tasks.brats.data import (
    N_CLASSES,
)
from cxrlab.tasks.brats.recipe import (
    BratsInferenceConfig,
    BratsModelConfig,
)

log = logging.getLogger(__name__)

IN_CHANNELS = 4
"""T1, T1ce, T2, FLAIR."""


def create_network(cfg: BratsModelConfig) -> nn.Module:
    """The 3D U-Net: 4 input channels, 4 canonical classes, instance norm, ReLU, padded convolutions."""
    if cfg.arch == "dynunet":
        from monai.networks.nets import DynUNet

        strides = [1, *cfg.strides]
        return DynUNet(spatial_dims=3, in_channels=IN_CHANNELS, out_channels=N_CLASSES,
                       kernel_size=[3] * len(strides), strides=strides, upsample_kernel_size=list(cfg.strides),
                       filters=list(cfg.channels), norm_name="instance", act_name="relu", dropout=cfg.dropout or None)
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=IN_CHANNELS, out_channels=N_CLASSES, channels=tuple(cfg.channels),
                strides=tuple(cfg.strides), num_res_units=cfg.num_res_units, norm="instance", act="relu",
                dropout=cfg.dropout)


def sliding_window_logits(network: nn.Module, image: torch.Tensor, patch: tuple[int, ...],
                          cfg: BratsInferenceConfig) -> torch.Tensor:
    """Class logits ``(B, 4, x, y, z)`` of whole volumes by MONAI's sliding window; flip TTA averages softmaxes.

    With ``cfg.tta`` the result is the log of the mean softmax over the 8 flips.
    """
    from monai.inferers import sliding_window_inference

    def run(x: torch.Tensor) -> torch.Tensor:
        return sliding_window_inference(x, roi_size=list(patch), sw_batch_size=cfg.sw_batch_size, predictor=network,
                                        overlap=cfg.overlap, mode=cfg.mode)

    if not cfg.tta:
        return run(image)
    total = None
    for flips in ([], [2], [3], [4], [2, 3], [2, 4], [3, 4], [2, 3, 4]):
        x = torch.flip(image, flips) if flips else image
        probs = torch.softmax(run(x).float(), dim=1)
        probs = torch.flip(probs, flips) if flips else probs
        total = probs if total is None else total + probs
    return torch.log(total / 8 + 1e-8)
