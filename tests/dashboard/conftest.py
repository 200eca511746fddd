"""The dashboard tests' shared fixture: a run root built by the real pipelines on phantoms.

``build_run_root`` lives in ``test_data.py`` (with the data-layer tests that describe each
fixture run); it is loaded by path because the tests run with ``--import-mode=importlib``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def fixture_runs():
    """``test_data.py`` as a module (its ``build_run_root`` and fixture-run writers)."""
    spec = importlib.util.spec_from_file_location("dashboard_fixture_runs", Path(__file__).with_name("test_data.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def run_root(tiny_recipe, tmp_path_factory) -> Path:
    """The shared fixture run root (built once per session under the base temp folder)."""
    return fixture_runs().build_run_root(tmp_path_factory.getbasetemp() / "dashboard", tiny_recipe)
