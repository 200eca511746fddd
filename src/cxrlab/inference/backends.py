"""Inference backends: PyTorch eager (default) or ONNX Runtime, behind one call.

A backend maps a float32 batch ``(N, C, H, W)`` to the network's raw output as a NumPy
array. Predictors call ``backend(batch)`` instead of the module, so the same pre- and
post-processing serves both. ONNX files are written by :func:`export_onnx` with a dynamic
batch axis and the run's metadata in ``metadata_props``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrlab.errors import ConfigError, MissingFileError, OnnxModelError
from cxrlab.utils import atomic_write

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "output"

BACKENDS = ("torch", "onnx", "onnx-int8")
"""What a predictor runs its networks with: PyTorch eager, the exported ONNX file, or its
INT8 quantization (``cxrlab export --quantize int8``), both through ONNX Runtime."""

EXPORT_DIR = "export"
"""The folder, next to a checkpoint, that ``cxrlab export`` writes its ONNX file into."""


def exported_path(checkpoint: str | Path, int8: bool = False) -> Path:
    """Where ``cxrlab export`` puts the ONNX file of ``checkpoint``.

    ``run/best_auroc.pt`` -> ``run/export/best_auroc.onnx`` (``best_auroc.int8.onnx`` for
    the INT8 quantization); every network of a run follows the same rule
    (``gate/export/best_loss.onnx``, ``baseline/export/best.onnx``, ...).
    """
    checkpoint = Path(checkpoint)
    return checkpoint.parent / EXPORT_DIR / f"{checkpoint.stem}{'.int8' if int8 else ''}.onnx"


class TorchBackend:
    """Run a ``torch.nn.Module`` in eval mode without gradients."""

    name = "torch"

    def __init__(self, module: torch.nn.Module, device: str | torch.device | None = None) -> None:
        self.module = module.eval()
        self.device = torch.device(device) if device is not None else None

    @torch.no_grad()
    def __call__(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        # A tensor stays where the caller put it (evaluation moves model and batch together).
        x = torch.as_tensor(batch, dtype=torch.float32, device=self.device)
        return self.module(x).float().cpu().numpy()


class OnnxBackend:
    """Run an exported ONNX file with ONNX Runtime (CPU, or CUDA when asked and available).

    Raises:
        OnnxModelError: the file is missing or corrupt, or its input's channel count or
            size differs from ``expect_shape`` (``(C, H, W)``) when given.
    """

    name = "onnx"

    def __init__(
        self,
        path: str | Path,
        providers: list[str] | None = None,
        threads: int | None = None,
        expect_shape: tuple[int, int, int] | None = None,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise OnnxModelError(self.path, "ONNX file not found")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        available = ort.get_available_providers()
        wanted = providers or ["CPUExecutionProvider"]
        chosen = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=chosen)
        except Exception as err:  # onnxruntime raises its own untyped errors on bad files
            raise OnnxModelError(self.path, f"not a valid ONNX model ({err})") from err
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise OnnxModelError(self.path, f"expected one input, found {len(inputs)}")
        self.input_name = inputs[0].name
        shape = tuple(inputs[0].shape[1:])
        if expect_shape is not None and shape != tuple(expect_shape):
            raise OnnxModelError(
                self.path, f"input shape {shape} does not match the run's {tuple(expect_shape)}"
            )
        self.metadata = read_metadata(self.session)

    def __call__(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        if isinstance(batch, torch.Tensor):
            batch = batch.detach().cpu().numpy()
        x = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run(None, {self.input_name: x})[0]


def check_metadata(path: str | Path, metadata: dict[str, Any], expected: dict[str, Any]) -> None:
    """Compare an ONNX file's metadata with what the run says.

    Raises:
        OnnxModelError: naming ``path``, the first key whose value differs (a file exported
            from another checkpoint, with other labels or another input size).
    """
    for key, want in expected.items():
        got = metadata.get(key)
        if got != want:
            raise OnnxModelError(path, f"metadata {key!r} is {got!r} but the run's is {want!r}; "
                                       "the file was exported from another model (run `cxrlab export` again)")


def open_backend(
    backend: str,
    module: torch.nn.Module,
    checkpoint: str | Path,
    expected: dict[str, Any],
    input_shape: tuple[int, int, int],
    providers: list[str] | None = None,
    onnx_path: str | Path | None = None,
    threads: int | None = None,
) -> TorchBackend | OnnxBackend:
    """The backend a predictor runs one network with.

    Args:
        backend: One of :data:`BACKENDS`.
        module: The network loaded from ``checkpoint`` (used as it is for ``torch``).
        checkpoint: The weights file; the ONNX file is :func:`exported_path` of it unless
            ``onnx_path`` is given.
        expected: Metadata the ONNX file must carry (model version, labels, ...).
        input_shape: ``(C, H, W)`` the network takes.
        providers: ONNX Runtime execution providers, in order of preference (CPU when
            none of them is available).
        threads: ONNX Runtime intra-op threads (None: its default).

    Raises:
        ConfigError: Unknown backend. MissingFileError: No export yet.
        OnnxModelError: A corrupt file, or one from another model (named).
    """
    if backend not in BACKENDS:
        raise ConfigError("--backend", f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "torch":
        return TorchBackend(module)
    path = Path(onnx_path) if onnx_path is not None else exported_path(checkpoint, int8=backend == "onnx-int8")
    if not path.is_file():
        hint = " --quantize int8" if backend == "onnx-int8" else ""
        raise MissingFileError(path, f"no ONNX export of {Path(checkpoint).name}; run `cxrlab export RUN_DIR{hint}` "
                                     "first")
    runner = OnnxBackend(path, providers=providers, threads=threads, expect_shape=input_shape)
    check_metadata(path, runner.metadata, expected)
    return runner


def read_metadata(session: Any) -> dict[str, Any]:
    """The JSON-decoded ``metadata_props`` of an ONNX Runtime session's model."""
    raw = session.get_modelmeta().custom_metadata_map
    out: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def export_onnx(
    module: torch.nn.Module,
    path: str | Path,
    input_shape: tuple[int, int, int],
    metadata: dict[str, Any] | None = None,
    opset: int = 17,
    tolerance: float = 1e-4,
) -> float:
    """Export ``module`` to ``path`` with a dynamic batch axis, then check parity.

    Metadata values are stored JSON-encoded in ``metadata_props``. The parity check runs
    a seeded random batch of 2 through both and compares sigmoid outputs.

    Returns:
        The maximum absolute difference of the sigmoid outputs.

    Raises:
        OnnxModelError: the difference exceeds ``tolerance`` (nothing is written).
    """
    import onnx

    module = module.eval().cpu()
    path = Path(path)
    dummy = torch.zeros(1, *input_shape)

    def write(tmp: Path) -> None:
        torch.onnx.export(
            module, (dummy,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset, dynamo=False,
        )
        model = onnx.load(str(tmp))
        for key, value in (metadata or {}).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, json.dumps(value)
        onnx.save(model, str(tmp))
        batch = torch.from_numpy(np.random.default_rng(0).random((2, *input_shape), np.float32))
        ref = torch.sigmoid(torch.as_tensor(TorchBackend(module)(batch))).numpy()
        got = 1.0 / (1.0 + np.exp(-OnnxBackend(tmp)(batch)))
        diff = float(np.abs(ref - got).max())
        if diff > tolerance:
            raise OnnxModelError(path, f"parity check failed: max |diff| {diff:.3g} > {tolerance}")
        write.diff = diff  # type: ignore[attr-defined]

    atomic_write(path, write)
    log.debug("exported %s (max |diff| %.3g)", path, write.diff)  # type: ignore[attr-defined]
    return write.diff  # type: ignore[attr-defined]
