"""The predictors reproduce what the prediction code gave before the inference layer existed.

``golden_predictions.json`` was written by ``tests/inference/golden.py`` with the old
functions (``pipelines.predict``, ``pipelines.pneumothorax_cv.predict_masks``,
``pipelines.screening_report.predict_screening``, commit "Golden predictions ..."). Training
on CPU is bit-repeatable, so the same tiny runs trained now must give the same numbers
through :mod:`cxrlab.inference`, and the service's model set must agree with both.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("cxrlab_tests_golden", Path(__file__).with_name("golden.py"))
golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(golden)


@pytest.fixture(scope="module")
def runs_and_images(golden_runs):
    return golden_runs


def _same(got, want, where=""):
    if isinstance(want, dict):
        assert set(got) == set(want), where
        for key in want:
            _same(got[key], want[key], f"{where}/{key}")
    elif isinstance(want, float):
        assert math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-6), f"{where}: {got} != {want}"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def test_predictors_reproduce_the_pre_move_predictions(runs_and_images):
    runs, paths = runs_and_images
    want = json.loads(golden.GOLDEN.read_text())
    got = golden.predict_all(runs, paths)
    _same(got, want)
    assert any(v["mask_pixels"] > 0 for v in want["pneumothorax"].values()), "the golden file holds a mask"


def test_service_models_give_the_same_findings_and_masks(runs_and_images):
    from cxrlab.io import read_image
    from cxrlab.serve.models import ModelSet

    runs, paths = runs_and_images
    want = json.loads(golden.GOLDEN.read_text())
    models = ModelSet(runs["classifier"], screening=runs["screening"], pneumothorax=runs["pneumothorax"])
    for path in paths:
        analysis = models.analyze(path)
        for finding in analysis.findings:
            assert finding["probability"] == pytest.approx(want["classifier"][path.name][finding["label"]], abs=1e-5)
        assert analysis.screening["decision"] == want["screening"][path.name]["decision"]
        assert analysis.screening["probability"] == pytest.approx(
            want["screening"][path.name]["abnormal_probability"], abs=1e-6)
        mask_pixels = want["pneumothorax"][f"cascade/{path.name}"]["mask_pixels"]
        assert round(analysis.pneumothorax["area_fraction"] * read_image(path).pixels.size) == mask_pixels
