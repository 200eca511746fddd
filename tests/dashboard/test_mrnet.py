"""MRNet runs on the dashboard: indexed with their per-task AUROCs, listed on Runs and Compare, and
the Knee MRI page shows an exam's three planes with the top slice's CAM, all without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cxrlab.dashboard import APP_PATH


@pytest.fixture(scope="module")
def mrnet_root(tmp_path_factory) -> Path:
    """A run root with one real (tiny) MRNet run: the ACL task, three planes, one epoch."""
    from cxrlab.config.mrnet import load_mrnet_config
    from cxrlab.tasks.mrnet.train import train

    root = tmp_path_factory.mktemp("mrnet_dash") / "runs"
    cfg = load_mrnet_config("configs/demo_mrnet.yaml", [
        "tasks=[acl]", "train.epochs=1", "phantoms.n_train=12", "phantoms.n_valid=6", "phantoms.grid=32",
        "phantoms.slices=[4, 6]", f"output.root={root}", "name=knee"])
    train(cfg)
    return root


def _app(root: Path, monkeypatch) -> AppTest:
    monkeypatch.setenv("CXRLAB_DASHBOARD_RUNS", str(root))
    monkeypatch.setenv("CXRLAB_CACHE_DIR", str(root.parent / "index-cache"))
    return AppTest.from_file(str(APP_PATH), default_timeout=120)


def test_index_reads_the_combined_aurocs_and_compare_reads_the_predictions(mrnet_root):
    from cxrlab.dashboard import data
    from cxrlab.dashboard.index import RunIndex

    record = next(r for r in RunIndex(mrnet_root).refresh() if r.name == "knee")
    metrics = json.loads((mrnet_root / "knee" / "metrics.json").read_text())["tasks"]["acl"]
    assert record.kind == "mrnet" and record.state == "finished" and record.tasks == ("acl",)
    assert record.arch == "alexnet" and record.resolution == 64
    assert record.aurocs["valid"]["acl"]["auroc"] == pytest.approx(metrics["combined"]["auroc"])
    assert record.info["models"]["acl"]["sagittal"]["specificity"] == pytest.approx(
        metrics["sagittal"]["specificity"], nan_ok=True)
    frame = data.auroc_frame([record], "test")
    assert frame["run"].tolist() == ["knee"] and frame["split"].tolist() == ["valid"]
    predictions = data.load_predictions(record, "valid")
    assert list(predictions.columns) == ["study_id", "label_acl", "prob_acl"] and len(predictions) == 6
    cams = data.mrnet_cams(record, predictions["study_id"][0], "acl")
    assert set(cams) == {"axial", "coronal", "sagittal"}
    assert all(0.0 <= c["map"].min() <= c["map"].max() <= 1.0 for c in cams.values())


def test_cam_overlay_marks_only_where_the_map_is_hot():
    from cxrlab.dashboard.data import cam_overlay

    image = np.full((8, 8), 100.0)
    image[0, 0] = 0.0
    cam = np.zeros((4, 4), dtype=np.float32)
    cam[3, 3] = 1.0
    plain, hot = cam_overlay(image, None), cam_overlay(image, cam)
    assert plain.shape == (8, 8, 3) and (plain[..., 0] == plain[..., 2]).all()
    assert (hot[0, 0] == plain[0, 0]).all() and hot[7, 7, 0] > hot[7, 7, 2]


RENDER = """
import json, sys
from streamlit.testing.v1 import AppTest
from cxrlab.dashboard import APP_PATH
at = AppTest.from_file(str(APP_PATH), default_timeout=120).run()
out = {}
for page in ("runs", "compare", "mrnet"):
    if page != "runs":
        at.switch_page(f"views/{page}.py").run()
    out[page] = [[t.value for t in at.title], len(at.get("plotly_chart")), [e.value for e in at.exception]]
out["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "lightning")
                        or m.startswith(("cxrlab.engine", "cxrlab.tasks")))
print("RESULT" + json.dumps(out))
"""


def test_pages_render_without_torch(mrnet_root):
    result = subprocess.run([sys.executable, "-c", RENDER], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "CXRLAB_DASHBOARD_RUNS": str(mrnet_root),
                                 "CXRLAB_CACHE_DIR": str(mrnet_root.parent / "index-cache")})
    line = next((x for x in result.stdout.splitlines() if x.startswith("RESULT")), None)
    assert line, result.stderr[-3000:]
    out = json.loads(line[len("RESULT"):])
    assert out.pop("modules") == []
    assert out["runs"][0] == ["Runs"] and out["runs"][2] == []
    assert out["compare"][0] == ["Compare runs"] and out["compare"][1] >= 1 and out["compare"][2] == []
    assert out["mrnet"] == [["Knee MRI (MRNet)"], 3, []]


def test_mrnet_page_slice_slider_and_cam(mrnet_root, monkeypatch):
    at = _app(mrnet_root, monkeypatch).run()
    at.switch_page("views/mrnet.py").run()
    assert not at.exception, [e.value for e in at.exception]
    slider = at.slider(key="mrnet_slice_sagittal")
    record_cams = sorted((mrnet_root / "knee" / "cams").glob(f"{at.selectbox(key='mrnet_exam').value}_acl_*.npz"))
    assert len(record_cams) == 3
    with np.load(next(p for p in record_cams if p.stem.endswith("sagittal"))) as npz:
        top = int(npz["slice"])
    assert slider.value == top
    titles = [c.proto.spec for c in at.get("plotly_chart")]
    assert any(f"CAM of the top slice {top}" in spec for spec in titles)
    slider.set_value((top + 1) % (slider.max + 1)).run()
    assert not at.exception
    titles = [c.proto.spec for c in at.get("plotly_chart")]
    assert any(f"(top slice: {top})" in spec for spec in titles)
