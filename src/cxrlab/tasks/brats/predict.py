"""The BraTS predictor: a trained run -> label volumes in the input's space, NIfTI files and overlays.

``BratsPredictor.from_run_dir(run_dir)`` once, then :meth:`BratsPredictor.predict` per case:
crop to the brain, z-score, sliding-window inference (flip TTA optional), argmax, and
the crop pasted back into the full grid. :func:`write_prediction` writes it with the
input's affine and header, in the input's label convention.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from cxrlab.data.datasets.brats import BratsCase, to_convention
from cxrlab.errors import MissingFileError
from cxrlab.io.nifti import write_nifti
from cxrlab.tasks.brats.data import preprocess, uncrop
from cxrlab.tasks.brats.network import create_network, sliding_window_logits
from cxrlab.tasks.brats.recipe import (
    BratsConfig,
    BratsInferenceConfig,
    config_from_mapping,
)

OVERLAY_COLOURS = {1: (220, 40, 40), 2: (40, 200, 60), 3: (250, 220, 40)}
"""Overlay colour (RGB) of NCR (red), ED (green), ET (yellow)."""


@dataclass
class BratsPredictor:
    """A trained network with its recipe.

    Attributes:
        network: The 3D U-Net (eval mode).
        cfg: The run's recipe.
        device: Where inference runs.
    """

    network: torch.nn.Module
    cfg: BratsConfig
    device: torch.device

    @classmethod
    def from_run_dir(cls, run_dir: str | Path, device: str | None = None, tta: bool | None = None) -> BratsPredictor:
        """Load ``config.yaml`` and ``best.pt`` of a run.

        Raises:
            MissingFileError: The run has no recipe or no checkpoint.
        """
        run_dir = Path(run_dir)
        for name in ("config.yaml", "best.pt"):
            if not (run_dir / name).is_file():
                raise MissingFileError(run_dir / name, "not a finished BraTS run (cxrlab brats train writes it)")
        cfg = config_from_mapping(yaml.safe_load((run_dir / "config.yaml").read_text()) or {})
        if tta is not None:
            cfg = dataclasses.replace(cfg, inference=dataclasses.replace(cfg.inference, tta=tta))
        checkpoint = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=False)
        network = create_network(cfg.model)
        network.load_state_dict(checkpoint["state_dict"])
        target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        return cls(network.to(target).eval(), cfg, target)

    @property
    def inference(self) -> BratsInferenceConfig:
        return self.cfg.inference

    @torch.no_grad()
    def predict(self, case: BratsCase) -> np.ndarray:
        """Canonical classes (0 background, 1 NCR, 2 ED, 3 ET) on the case's full grid, uint8."""
        prep = preprocess(case.image)
        image = torch.from_numpy(prep.image[None]).to(self.device)
        logits = sliding_window_logits(self.network, image, self.cfg.data.patch, self.inference)
        cropped = logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
        return uncrop(cropped, prep)


def write_prediction(case: BratsCase, canonical: np.ndarray, out_dir: str | Path) -> Path:
    """``<out_dir>/<case>.nii.gz`` in the case's label convention, affine and header (BraTS submission naming)."""
    return write_nifti(Path(out_dir) / f"{case.case_id}.nii.gz", to_convention(canonical, case.convention),
                       reference=case.reference)


def _window(channel: np.ndarray) -> np.ndarray:
    inside = channel[channel != 0]
    if inside.size == 0:
        return np.zeros(channel.shape, dtype=np.uint8)
    lo, hi = np.percentile(inside, [1, 99])
    return (np.clip((channel - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def overlay_views(flair: np.ndarray, canonical: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
    """An RGB strip: axial, coronal and sagittal FLAIR slices through the tumour centroid, prediction coloured.

    With ``truth`` a second row shows the reference. Slices are rotated so anterior is up.
    """
    mask = canonical > 0 if canonical.any() else (truth > 0 if truth is not None and truth.any() else None)
    centre = (np.argwhere(mask).mean(0).round().astype(int) if mask is not None
              else np.array(flair.shape) // 2)
    gray = _window(flair)
    rows = []
    for labels in [canonical] + ([truth] if truth is not None else []):
        tiles = []
        for axis in (2, 1, 0):      # axial (z), coronal (y), sagittal (x)
            index = [slice(None)] * 3
            index[axis] = int(centre[axis])
            g, lab = gray[tuple(index)], labels[tuple(index)]
            rgb = np.repeat(g[..., None], 3, axis=2).astype(np.float32)
            for cls, colour in OVERLAY_COLOURS.items():
                where = lab == cls
                rgb[where] = 0.45 * rgb[where] + 0.55 * np.array(colour, dtype=np.float32)
            tile = np.rot90(rgb.astype(np.uint8))
            tiles.append(tile)
        height = max(t.shape[0] for t in tiles)
        tiles = [np.pad(t, ((0, height - t.shape[0]), (0, 2), (0, 0))) for t in tiles]
        rows.append(np.concatenate(tiles, axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(rows, axis=0)


def write_overlay(path: str | Path, case: BratsCase, canonical: np.ndarray) -> Path:
    """PNG of :func:`overlay_views` (prediction row, then the reference row when the case has one), atomically."""
    import cv2

    from cxrlab.io.write import write_bytes_atomic

    rgb = overlay_views(case.image[3], canonical, case.label)
    scale = max(1, 384 // max(rgb.shape[:2]))
    if scale > 1:
        rgb = np.kron(rgb, np.ones((scale, scale, 1), dtype=np.uint8))
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise OSError(f"{path}: OpenCV could not encode the overlay")
    write_bytes_atomic(path, encoded.tobytes())
    return Path(path)
