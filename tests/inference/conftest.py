"""The tiny golden runs (one per task kind), trained once per session and shared by the
golden test and the export tests (training them is most of either file's time)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("cxrlab_tests_golden", Path(__file__).with_name("golden.py"))
golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(golden)


@pytest.fixture(scope="session")
def golden_runs(tmp_path_factory) -> tuple[dict[str, Path], list[Path]]:
    """``({"classifier", "pneumothorax", "screening"} -> run dir, [four phantoms, RG1_UNCR.dcm])``."""
    root = tmp_path_factory.mktemp("golden")
    return golden.train_runs(root), golden.images(root / "images")
