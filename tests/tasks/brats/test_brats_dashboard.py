"""The dashboard shows a BraTS run: the index reads it as kind ``brats`` with its per-region means,
the Runs page lists it with its per-region table, the BraTS page renders (AppTest, in a fresh
interpreter that never imports torch, Lightning, the engine or the tasks) with the run's region
table and the slice viewer of image, reference and prediction, and the viewer's arrays are the
case's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("streamlit")

RENDER_BRATS = """
import json, sys
from streamlit.testing.v1 import AppTest
from cxrlab.dashboard import APP_PATH
at = AppTest.from_file(str(APP_PATH), default_timeout=120).run()
runs_page = {"subheaders": [h.value for h in at.subheader], "exceptions": [e.value for e in at.exception],
             "listing": at.dataframe[-2].value.to_dict("list"), "brats": at.dataframe[-1].value.to_dict("list")}
at.switch_page("views/brats.py").run()
def state():
    return {"titles": [t.value for t in at.title], "exceptions": [e.value for e in at.exception],
            "warnings": [w.value for w in at.warning],
            "tables": [f.value.to_dict("list") for f in at.dataframe],
            "images": [c for img in at.get("image") for c in img.captions],
            "charts": len(at.get("plotly_chart")),
            "slider": [(s.label, s.value, s.max) for s in at.slider]}
out = {"runs_page": runs_page, "first": state()}
at.radio(key="brats_plane").set_value("sagittal").run()
at.selectbox(key="brats_modality").set_value("t1ce").run()
out["sagittal"] = state()
out["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "lightning")
                        or m.startswith(("cxrlab.engine", "cxrlab.tasks")))
print("RESULT" + json.dumps(out))
"""


def test_index_reads_a_brats_run(tiny_run):
    from cxrlab.dashboard.index import RunIndex

    run_dir, out = tiny_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    index = RunIndex(out / "runs")
    index.refresh()
    record = index.get("tiny")
    assert record is not None and record.kind == "brats" and record.state == "finished", record
    assert record.arch == "unet" and record.dataset == "brats (brats2020)" and record.info["stages"] == 1
    assert record.info["regions"]["WT"]["dice"] == pytest.approx(metrics["mean"]["WT"]["dice"])
    assert record.info["n_cases"] == metrics["n_cases"]


def test_brats_page_renders_tables_and_slice_viewer_without_training_code(tiny_run, tmp_path):
    from cxrlab.data.datasets.brats import BratsDataset

    run_dir, out = tiny_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    first_case = sorted(json.loads((run_dir / "split.json").read_text())["test"])[0]
    shape = BratsDataset(out / "phantoms", only=[first_case]).load(first_case).image.shape[1:]
    result = subprocess.run([sys.executable, "-c", RENDER_BRATS], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "CXRLAB_DASHBOARD_RUNS": str(out / "runs"),
                                 "CXRLAB_CACHE_DIR": str(tmp_path / "index-cache")})
    line = next((x for x in result.stdout.splitlines() if x.startswith("RESULT")), None)
    assert line, result.stderr[-3000:]
    body = json.loads(line[len("RESULT"):])
    assert body["modules"] == []
    runs_page = body["runs_page"]
    assert runs_page["exceptions"] == []
    assert "BraTS runs — mean Dice and HD95 (mm) per region" in runs_page["subheaders"]
    assert runs_page["listing"]["kind"] == ["brats"] and runs_page["brats"]["run"] == ["tiny"]
    first = body["first"]
    assert first["titles"] == ["BraTS"] and first["exceptions"] == [] and first["warnings"] == [], first
    assert first["charts"] == 1
    runs_table, region_table, case_table = first["tables"]
    assert runs_table["run"] == ["tiny"] and runs_table["WT_dice"][0] == pytest.approx(
        metrics["mean"]["WT"]["dice"], abs=1e-3)
    assert region_table["region"] == ["WT", "TC", "ET"]
    for i, region in enumerate(("WT", "TC", "ET")):
        assert region_table["dice_median"][i] == pytest.approx(metrics["median"][region]["dice"], abs=1e-3)
        assert region_table["hd95_mean_mm"][i] == pytest.approx(metrics["mean"][region]["hd95"], abs=1e-3)
    assert sorted(case_table["case"]) == sorted(metrics["cases"])
    assert first["images"] == ["flair", "reference", "prediction"]
    label, value, top = first["slider"][0]
    assert label == "axial slice" and top == shape[2] - 1 and 0 <= value <= top
    sagittal = body["sagittal"]
    assert sagittal["exceptions"] == [] and sagittal["images"] == ["t1ce", "reference", "prediction"]
    assert sagittal["slider"][0][0] == "sagittal slice" and sagittal["slider"][0][2] == shape[0] - 1


def test_slice_viewer_reads_the_case_and_the_written_prediction(tiny_run):
    from cxrlab.dashboard.brats import load_case_views, predicted_cases
    from cxrlab.data.datasets.brats import BratsDataset
    from cxrlab.inference.brats import BratsPredictor

    run_dir, out = tiny_run
    split = json.loads((run_dir / "split.json").read_text())
    assert predicted_cases(run_dir) == sorted(split["test"])
    case_id = split["test"][0]
    views = load_case_views(run_dir, case_id)
    case = BratsDataset(out / "phantoms").load(case_id)
    np.testing.assert_array_equal(views.image, case.image)
    np.testing.assert_array_equal(views.reference, case.label)
    np.testing.assert_array_equal(views.prediction, BratsPredictor.from_run_dir(run_dir, device="cpu").predict(case))
