"""``cxrlab export``: a run's networks to ONNX, checked against PyTorch, optionally INT8.

Every network of a run is written next to its checkpoint (:func:`exported_path`:
``best_auroc.pt`` -> ``export/best_auroc.onnx``), so the predictors find it with
``backend="onnx"``:

* classification run: the classifier (``best_auroc.pt``);
* pneumothorax run: the gate (``gate/best_*.pt``) and the U-Nets (``baseline/best.pt``,
  ``one_case/best.pt``);
* screening run: each trained variant's networks (``ensemble/model_<disease>.pt`` or
  ``shared/shared.pt``), classification logits only.

Each file has a dynamic batch axis and carries the run's metadata (labels, thresholds,
input shape, channels, preprocessing, normalization, the checkpoint's digest as model
version, the cxrlab version). Right after export, the probabilities of PyTorch and ONNX
Runtime are compared on phantoms and on pydicom-data's real ``RG1_UNCR.dcm``; above the
tolerance nothing is written.

INT8 (:func:`quantize_classifier`): static QDQ quantization calibrated on the run's
validation images, accepted only when the validation AUROC moves by less than a tolerance.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrlab import __version__
from cxrlab.config.screening import load_screening_config
from cxrlab.data.synthetic import generate_phantom
from cxrlab.errors import ConfigError, MissingFileError, OnnxModelError
from cxrlab.inference.backends import (
    INPUT_NAME,
    OnnxBackend,
    TorchBackend,
    export_onnx,
    exported_path,
)
from cxrlab.inference.base import file_version, input_shape
from cxrlab.inference.classifier import ClassifierPredictor, resolve_checkpoint
from cxrlab.inference.pneumothorax import UNetPredictor, gate_checkpoint
from cxrlab.inference.screening import (
    ClassificationLogits,
    ScreeningPredictor,
    _softmax,
    variant_checkpoints,
)
from cxrlab.io import read_image
from cxrlab.metrics.classification import multilabel_auroc
from cxrlab.models.segmentation import foreground_probability
from cxrlab.runs.rundir import read_run_json
from cxrlab.utils import atomic_write

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4
"""Largest accepted max |difference| of fp32 probabilities, PyTorch vs ONNX Runtime."""

INT8_TOLERANCE = 0.005
"""Largest accepted change of the validation AUROC from fp32 to INT8."""


@dataclass
class ExportNetwork:
    """One network of a run, ready to export.

    Attributes:
        name: Where it sits in the run (``classifier``, ``gate``, ``baseline``, ``ensemble/model_edema``).
        checkpoint: Its weights file. module: The module mapping inputs to logits.
        tensor: Decoded pixels -> the ``(C, H, W)`` input. probability: Logits -> probabilities.
        metadata: What the ONNX file carries.
    """

    name: str
    checkpoint: Path
    module: torch.nn.Module
    tensor: Callable[[np.ndarray], torch.Tensor]
    probability: Callable[[np.ndarray], np.ndarray]
    metadata: dict[str, Any]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.metadata["input_shape"])  # type: ignore[return-value]


@dataclass
class ExportResult:
    """An exported network: its file and the parity check's max |difference| of probabilities."""

    name: str
    path: Path
    max_diff: float
    images: list[str] = field(default_factory=list)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return torch.sigmoid(torch.from_numpy(np.asarray(logits, np.float32))).numpy()


def _common(kind: str, checkpoint: Path, shape: tuple[int, ...], **details: Any) -> dict[str, Any]:

    return {"kind": kind, "model_version": file_version([checkpoint]), "checkpoint": checkpoint.name,
            "input_shape": list(shape), "channels": int(shape[0]), "cxrlab_version": __version__,
            "precision": "fp32", "output": "logits", **details}


def _classifier_network(predictor: ClassifierPredictor, name: str) -> ExportNetwork:
    checkpoint = Path(predictor.info.files[0])
    meta = predictor.meta
    metadata = _common(predictor.info.kind, checkpoint, predictor.input_shape(), activation="sigmoid",
                       labels=predictor.labels, thresholds=predictor.thresholds, arch=meta.get("arch"),
                       preprocessing=meta.get("preprocessing"), normalization=meta.get("normalization"))
    return ExportNetwork(name, checkpoint, predictor.model, predictor.tensor, _sigmoid, metadata)


def _unet_probability(logits: np.ndarray) -> np.ndarray:
    return foreground_probability(torch.from_numpy(np.asarray(logits, np.float32))).numpy()


def _pneumothorax_networks(run_dir: Path) -> list[ExportNetwork]:
    networks = []
    try:
        gate = ClassifierPredictor.from_run_dir(gate_checkpoint(run_dir), kind="pneumothorax-gate")
        networks.append(_classifier_network(gate, "gate"))
    except MissingFileError:
        log.info("%s has no gate; exporting the U-Nets only", run_dir)
    tuned_path = run_dir / "postprocess.json"
    tuned = json.loads(tuned_path.read_text()) if tuned_path.is_file() else {}
    for folder, model in (("baseline", "baseline"), ("one_case", "cascade")):
        checkpoint = run_dir / folder / "best.pt"
        if not checkpoint.is_file():
            continue
        unet = UNetPredictor.from_checkpoint(checkpoint)
        metadata = _common("unet", checkpoint, unet.input_shape(), activation="foreground",
                           encoder=unet.meta.get("encoder"), model=model,
                           preprocessing=unet.meta.get("preprocessing"),
                           normalization=unet.meta.get("normalization"), postprocess=tuned.get(model))
        networks.append(ExportNetwork(folder, checkpoint, unet.unet, unet.tensor, _unet_probability, metadata))
    if not networks:
        raise MissingFileError(run_dir, "no trained network (gate, baseline/best.pt, one_case/best.pt)")
    return networks


def _screening_networks(run_dir: Path) -> list[ExportNetwork]:

    cfg = load_screening_config(run_dir / "config.yaml")
    networks = []
    for variant in cfg.model.variants:
        checkpoints = variant_checkpoints(run_dir, variant, list(cfg.data.diseases))
        if not all(path.is_file() for path in checkpoints):
            log.info("%s: variant %s is not trained; skipped", run_dir, variant)
            continue
        predictor = ScreeningPredictor(run_dir, variant=variant)
        k = cfg.model.num_classes

        def probability(logits: np.ndarray, k: int = k) -> np.ndarray:
            return _softmax(np.asarray(logits).reshape(len(logits), -1, k))

        shape = input_shape(predictor.tensor)
        for net, checkpoint in zip(predictor.nets, checkpoints):
            metadata = _common("screening", checkpoint, shape, activation="softmax", variant=variant,
                               diseases=predictor.diseases, num_classes=k,
                               normalization=cfg.data.normalization,
                               threshold=float(predictor.point["threshold"]))
            networks.append(ExportNetwork(f"{variant}/{checkpoint.stem}", checkpoint, ClassificationLogits(net),
                                          predictor.tensor, probability, metadata))
    if not networks:
        raise MissingFileError(run_dir, "no trained screening variant")
    return networks


def run_kind(path: str | Path) -> str:
    """``classification``, ``segmentation`` (pneumothorax) or ``screening`` for a run folder
    (its ``run.json``, else the files it holds) or a ``.pt`` classifier checkpoint.

    Raises:
        MissingFileError: No such path. ConfigError: A run kind that has nothing to export.
    """
    path = Path(path)
    if path.is_file():
        return "classification"
    if not path.is_dir():
        raise MissingFileError(path, "run directory not found")
    kind = read_run_json(path).get("kind")
    if kind is None:
        if (path / "best_auroc.pt").is_file():
            kind = "classification"
        elif (path / "baseline").is_dir() or (path / "gate").is_dir():
            kind = "segmentation"
        elif (path / "ensemble").is_dir() or (path / "shared").is_dir():
            kind = "screening"
    if kind not in ("classification", "segmentation", "screening"):
        raise ConfigError(str(path), f"cannot export a {kind or 'unrecognised'} run; cxrlab export takes "
                                     "classification, pneumothorax and screening runs")
    return str(kind)


def run_networks(path: str | Path) -> list[ExportNetwork]:
    """Every network of a run (or of one classifier checkpoint), loaded with PyTorch."""
    kind = run_kind(path)
    if kind == "classification":
        return [_classifier_network(ClassifierPredictor.from_run_dir(path), "classifier")]
    if kind == "segmentation":
        return _pneumothorax_networks(Path(path))
    return _screening_networks(Path(path))


def parity_images(size: int = 160) -> list[tuple[str, np.ndarray]]:
    """Images the parity check runs: three phantoms (one with a pneumothorax) and, when
    pydicom-data is installed, its real chest radiograph ``RG1_UNCR.dcm``."""
    images = [(f"phantom_{i}", generate_phantom(np.random.default_rng(900 + i), size, names).image)
              for i, names in enumerate([(), ("pneumothorax",), ("cardiomegaly", "effusion")])]
    try:
        import data_store  # pydicom-data: an optional extra
    except ImportError:
        log.warning("pydicom-data is not installed: the parity check runs on phantoms only")
        return images
    rg1 = Path(data_store.__file__).parent / "data" / "RG1_UNCR.dcm"
    if rg1.is_file():
        images.append((rg1.name, read_image(rg1).pixels))
    return images


def parity(network: ExportNetwork, onnx_file: Path, images: Sequence[tuple[str, np.ndarray]],
           providers: list[str] | None = None) -> float:
    """Max |difference| of the probabilities PyTorch and ONNX Runtime give for ``images``."""
    batch = torch.stack([network.tensor(pixels) for _, pixels in images]).numpy()
    ref = network.probability(TorchBackend(network.module)(batch))
    got = network.probability(OnnxBackend(onnx_file, providers=providers)(batch))
    return float(np.abs(ref - got).max())


def _targets(path: Path, networks: Sequence[ExportNetwork], out: str | Path | None) -> list[Path]:
    """Where each network's ONNX file goes: next to its checkpoint, or under ``out``."""
    if out is None:
        return [exported_path(n.checkpoint) for n in networks]
    out = Path(out)
    if out.suffix == ".onnx":
        if len(networks) != 1:
            raise ConfigError("--out", f"{path} has {len(networks)} networks; give a folder, not one .onnx file")
        return [out]
    base = path if path.is_dir() else path.parent
    return [out / exported_path(n.checkpoint).relative_to(base) for n in networks]


def export_run(path: str | Path, out: str | Path | None = None, opset: int = 17,
               tolerance: float = PARITY_TOLERANCE, images: Sequence[tuple[str, np.ndarray]] | None = None
               ) -> list[ExportResult]:
    """Export every network of a run to ONNX and check parity (see the module).

    Args:
        path: A classification, pneumothorax or screening run folder, or a classifier ``.pt``.
        out: None: next to each checkpoint (where ``backend="onnx"`` looks); a ``.onnx``
            file (one-network runs); or a folder holding the run's layout.
        opset: ONNX opset. tolerance: Largest accepted max |difference| of probabilities.
        images: Parity images (default :func:`parity_images`).

    Raises:
        OnnxModelError: A network fails the parity check; no file of the run is written.
    """
    path = Path(path)
    networks = run_networks(path)
    targets = _targets(path, networks, out)
    images = list(images) if images is not None else parity_images()
    staging_root = Path(out) if out is not None and Path(out).suffix != ".onnx" else targets[0].parent
    staging_root.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(prefix=".export-", dir=staging_root) as tmp:
        staged = []
        for k, (network, target) in enumerate(zip(networks, targets)):
            file = Path(tmp) / f"{k}.onnx"
            try:
                export_onnx(network.module, file, network.input_shape, network.metadata, opset=opset,
                            tolerance=max(tolerance, 1e-6))
            except OnnxModelError as err:
                raise OnnxModelError(target, f"{network.name}: {err.problem}; nothing was written") from err
            diff = parity(network, file, images)
            log.info("%s: max |diff| of probabilities %.3g on %d images", network.name, diff, len(images))
            if not diff <= tolerance:
                raise OnnxModelError(target, f"{network.name}: parity check failed: max |diff| of probabilities "
                                             f"{diff:.3g} > {tolerance:g} on {[n for n, _ in images]}; nothing "
                                             "was written")
            staged.append(file)
            results.append(ExportResult(network.name, target, diff, [n for n, _ in images]))
        for file, target in zip(staged, targets):
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(file, target)
    return results


# ---------------------------------------------------------------- INT8


@dataclass
class Int8Result:
    """The INT8 decision: validation scores of fp32 and INT8 and whether the change is accepted."""

    name: str
    path: Path
    metric: str
    fp32: float
    int8: float
    tolerance: float
    seconds_fp32: float = 0.0
    seconds_int8: float = 0.0

    @property
    def change(self) -> float:
        return self.int8 - self.fp32

    @property
    def accepted(self) -> bool:
        return bool(abs(self.change) < self.tolerance)


def quantize_static_int8(fp32_file: str | Path, out: str | Path, calibration: Sequence[np.ndarray],
                         metadata: dict[str, Any] | None = None) -> Path:
    """Static QDQ INT8 quantization (per-channel weights) of an fp32 ONNX file, calibrated
    on ``calibration`` batches; the fp32 file's metadata is kept (``precision: int8``)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch, np.float32)}

    fp32_file = Path(fp32_file)
    source = onnx.load(str(fp32_file))
    props = {p.key: p.value for p in source.metadata_props}
    props["precision"] = json.dumps("int8")
    for key, value in (metadata or {}).items():
        props[key] = json.dumps(value)

    def write(tmp: Path) -> None:
        with tempfile.TemporaryDirectory() as work:
            pre = Path(work) / "pre.onnx"
            quant_pre_process(str(fp32_file), str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        model = onnx.load(str(tmp))
        del model.metadata_props[:]
        for key, value in props.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(model, str(tmp))

    return atomic_write(out, write)


def mean_auroc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean per-label AUROC over the labels with both classes present (unknown labels: NaN)."""
    import warnings


    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        per_label = multilabel_auroc(labels, probabilities)
    if not np.isfinite(per_label).any():
        raise ConfigError("validation", "no label has both classes in the validation split; cannot judge INT8")
    return float(np.nanmean(per_label))


def quantize_classifier(path: str | Path, images: Sequence[np.ndarray], labels: np.ndarray,
                        tolerance: float = INT8_TOLERANCE, fp32_file: str | Path | None = None,
                        out: str | Path | None = None, calibration_batches: int = 8) -> Int8Result:
    """INT8 of a classifier's ONNX export, kept only if the validation AUROC holds.

    Args:
        path: The classification run (or checkpoint) whose ``export/*.onnx`` exists.
        images: Validation model inputs, batches ``(N, C, S, S)``; the first
            ``calibration_batches`` calibrate the quantization, all of them score it.
        labels: ``[sum N, K]`` validation labels (NaN = unknown), in the same order.
        tolerance: Largest accepted |AUROC change|; 0 refuses every INT8 model.
        fp32_file: The fp32 export (default: next to the checkpoint). out: The INT8 file
            (default: ``export/<stem>.int8.onnx`` next to the checkpoint).

    Raises:
        MissingFileError: No fp32 export. OnnxModelError: The AUROC moved too much
            (the numbers in the message; no INT8 file is left).
    """
    import time

    checkpoint = resolve_checkpoint(path)
    fp32_file = Path(fp32_file) if fp32_file is not None else exported_path(checkpoint)
    if not fp32_file.is_file():
        raise MissingFileError(fp32_file, "no fp32 ONNX export; run `cxrlab export RUN_DIR` first")
    target = Path(out) if out is not None else exported_path(checkpoint, int8=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=target.parent) as tmp:
        staged = Path(tmp) / "int8.onnx"
        quantize_static_int8(fp32_file, staged, list(images[:calibration_batches]))
        scores, seconds = {}, {}
        for precision, file in (("fp32", fp32_file), ("int8", staged)):
            backend = OnnxBackend(file)
            start = time.perf_counter()
            probs = np.concatenate([_sigmoid(backend(batch)) for batch in images])
            seconds[precision] = time.perf_counter() - start
            scores[precision] = mean_auroc(labels, probs)
        result = Int8Result("classifier", target, "validation AUROC", scores["fp32"], scores["int8"], tolerance,
                            seconds["fp32"], seconds["int8"])
        if not result.accepted:
            raise OnnxModelError(target, f"INT8 refused: validation AUROC fp32 {result.fp32:.4f}, int8 "
                                         f"{result.int8:.4f}, change {result.change:+.4f} is not within "
                                         f"{tolerance:g}; no INT8 file written")
        os.replace(staged, target)
    return result

