"""The BraTS predictor: a trained run -> label volumes in the input's space, NIfTI files and overlays.

``BratsPredictor.from_run_dir(run_dir)`` once, then :meth:`BratsPredictor.predict` per case:
crop to the brain, z-score, sliding-window inference (flip TTA optional), argmax, and
the crop pasted back into the full grid. With ``model.stages: 2`` (Weninger et al.) a
locator first segments the whole tumour on the brain box downsampled by
``model.locator_scale``; the segmenter then works inside the located box plus
``model.margin`` voxels, and everything outside it is background.
:func:`write_prediction` writes the result with the input's affine and header, in the
input's label convention. The trainer's validation uses :func:`create_network` and
:func:`case_logits` too, so training and prediction share one path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from cxrlab.config.brats import BratsConfig, BratsModelConfig, config_from_mapping
from cxrlab.data.brain import (
    box_slices,
    downsample_image,
    overlay_views,
    preprocess,
    tumour_box,
    uncrop,
    upsample_mask,
)
from cxrlab.data.datasets.brats import CANONICAL, MODALITIES, BratsCase, to_convention
from cxrlab.errors import ConfigError, MissingFileError
from cxrlab.io.nifti import write_nifti
from cxrlab.io.write import write_bytes_atomic
from cxrlab.models.unet3d import create_unet3d, sliding_window_logits

LOCATOR_DIR = "locator"
"""Sub-folder of a two-stage run that holds the locator's ``best.pt``, history and checkpoints."""


def create_network(cfg: BratsModelConfig, out_channels: int = len(CANONICAL)) -> nn.Module:
    """The recipe's 3D U-Net: one input channel per MR sequence, ``out_channels`` classes (2 for the locator)."""
    return create_unet3d(cfg.arch, len(MODALITIES), out_channels, cfg.channels, cfg.strides, cfg.num_res_units,
                         cfg.dropout)


def case_logits(network: nn.Module, image: torch.Tensor, cfg: BratsConfig) -> torch.Tensor:
    """Sliding-window logits ``(B, K, x, y, z)`` with the recipe's window, blending and TTA."""
    inf = cfg.inference
    return sliding_window_logits(network, image, cfg.data.patch, overlap=inf.overlap, sw_batch_size=inf.sw_batch_size,
                                 mode=inf.mode, tta=inf.tta)


def _load_weights(path: Path, network: nn.Module) -> nn.Module:
    if not path.is_file():
        raise MissingFileError(path, "not a finished BraTS run (cxrlab brats train writes it)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    network.load_state_dict(checkpoint["state_dict"])
    return network


@dataclass
class BratsPredictor:
    """A trained network (and, with two stages, its locator) with its recipe.

    Attributes:
        network: The 3D U-Net (eval mode) that segments NCR / ED / ET.
        cfg: The run's recipe.
        device: Where inference runs.
        locator: The two-class network of ``model.stages: 2`` (eval mode), else None.
    """

    network: nn.Module
    cfg: BratsConfig
    device: torch.device
    locator: nn.Module | None = None

    @classmethod
    def from_run_dir(cls, run_dir: str | Path, device: str | None = None, tta: bool | None = None) -> BratsPredictor:
        """Load ``config.yaml`` and ``best.pt`` of a run (and ``locator/best.pt`` with two stages).

        Raises:
            MissingFileError: The run has no recipe or no checkpoint.
        """
        run_dir = Path(run_dir)
        if not (run_dir / "config.yaml").is_file():
            raise MissingFileError(run_dir / "config.yaml", "not a BraTS run (cxrlab brats train writes it)")
        cfg = config_from_mapping(yaml.safe_load((run_dir / "config.yaml").read_text()) or {})
        if tta is not None:
            cfg = dataclasses.replace(cfg, inference=dataclasses.replace(cfg.inference, tta=tta))
        target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        network = _load_weights(run_dir / "best.pt", create_network(cfg.model)).to(target).eval()
        locator = None
        if cfg.model.stages == 2:
            locator = _load_weights(run_dir / LOCATOR_DIR / "best.pt", create_network(cfg.model, 2))
            locator = locator.to(target).eval()
        return cls(network, cfg, target, locator)

    def _argmax(self, network: nn.Module, image: np.ndarray) -> np.ndarray:
        logits = case_logits(network, torch.from_numpy(np.ascontiguousarray(image)[None]).to(self.device), self.cfg)
        return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()

    def locate(self, image: np.ndarray) -> np.ndarray:
        """The locator's whole-tumour mask on the (cropped, z-scored) grid of ``image`` ``(4, x, y, z)``."""
        if self.locator is None:
            raise ConfigError("model.stages", "a one-stage run has no locator")
        scale = self.cfg.model.locator_scale
        coarse = self._argmax(self.locator, downsample_image(image, scale)) > 0
        return upsample_mask(coarse, scale, image.shape[1:])

    @torch.no_grad()
    def predict(self, case: BratsCase) -> np.ndarray:
        """Canonical classes (0 background, 1 NCR, 2 ED, 3 ET) on the case's full grid, uint8."""
        prep = preprocess(case.image)
        if self.locator is None:
            return uncrop(self._argmax(self.network, prep.image), prep)
        cropped = np.zeros(prep.image.shape[1:], dtype=np.uint8)
        box = tumour_box(self.locate(prep.image), self.cfg.model.margin)
        if box is not None:
            region = box_slices(box)
            cropped[region] = self._argmax(self.network, prep.image[(slice(None), *region)])
        return uncrop(cropped, prep)


def write_prediction(case: BratsCase, canonical: np.ndarray, out_dir: str | Path) -> Path:
    """``<out_dir>/<case>.nii.gz`` in the case's label convention, affine and header (BraTS submission naming)."""
    return write_nifti(Path(out_dir) / f"{case.case_id}.nii.gz", to_convention(canonical, case.convention),
                       reference=case.reference)


def write_overlay(path: str | Path, case: BratsCase, canonical: np.ndarray) -> Path:
    """PNG of :func:`overlay_views` (prediction row, then the reference row when the case has one), atomically."""
    import cv2

    rgb = overlay_views(case.image[3], canonical, case.label)
    scale = max(1, 384 // max(rgb.shape[:2]))
    if scale > 1:
        rgb = np.kron(rgb, np.ones((scale, scale, 1), dtype=np.uint8))
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise OSError(f"{path}: OpenCV could not encode the overlay")
    write_bytes_atomic(path, encoded.tobytes())
    return Path(path)
