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

from cxrlab.errors import OnnxModelError
from cxrlab.utils import atomic_write

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "output"


class TorchBackend:
    """Run a ``torch.nn.Module`` in eval mode without gradients."""

    name = "torch"

    def __init__(self, module: torch.nn.Module, device: str | torch.device = "cpu") -> None:
        self.module = module.eval()
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
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
    log.info("exported %s (max |diff| %.3g)", path, write.diff)  # type: ignore[attr-defined]
    return write.diff  # type: ignore[attr-defined]
