from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrlab.errors import OnnxModelError
from cxrlab.inference.backends import OnnxBackend, TorchBackend, export_onnx


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(4, 3),
    )
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    diff = export_onnx(net, path, (1, 32, 32), metadata={"labels": ["a", "b", "c"]})
    return net, path, diff


def test_parity_dynamic_batch_and_metadata(exported):
    net, path, diff = exported
    assert diff < 1e-4
    backend = OnnxBackend(path, expect_shape=(1, 32, 32))
    assert backend.metadata["labels"] == ["a", "b", "c"]
    batch = np.random.default_rng(1).random((5, 1, 32, 32), np.float32)
    np.testing.assert_allclose(backend(batch), TorchBackend(net)(batch), atol=1e-4)


def test_corrupt_and_mismatched_files_are_named(exported, tmp_path):
    _, path, _ = exported
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(OnnxModelError, match="bad.onnx"):
        OnnxBackend(bad)
    with pytest.raises(OnnxModelError, match="does not match"):
        OnnxBackend(path, expect_shape=(3, 32, 32))
