"""The BraTS task end to end on SYNTHETIC phantoms: a tiny 3D U-Net segments held-out phantom
tumours, the prediction written back as NIfTI keeps the input's affine and shape and, fed the
reference, reproduces it; `metrics brats` and `brats stats` answer in the documented JSON; the
shipped demo recipe matches the demo's settings.

Threshold: the helper's sweep of this tiny setting (10 phantoms of 32 voxels, 15 epochs) over
seeds 0-4 gave held-out mean WT Dice 0.877-0.936 (lowest single case 0.804); calling the whole
brain tumour scores about 0.17. The test asks for mean WT Dice > 0.7. TC/ET are too small at this
size to be scored (Dice 0 in that sweep). Since every epoch's loader shuffle is re-seeded too (for
bit-identical resumes) seed 0 gives 0.919; seeds 1-4 were not re-run after that change.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("monai")

REPO = Path(__file__).resolve().parents[3]


def test_trained_unet_segments_held_out_phantom_tumours(tiny_run):
    run_dir, _ = tiny_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n_cases"] >= 3
    assert metrics["mean"]["WT"]["dice"] > 0.7, metrics["mean"]
    assert (run_dir / "run.json").is_file() or (run_dir / "config.yaml").is_file()


def test_prediction_written_back_in_the_input_space(tiny_run, tmp_path):
    from cxrlab.data.datasets.brats import BratsDataset
    from cxrlab.io.nifti import read_nifti
    from cxrlab.inference.brats import BratsPredictor, write_prediction

    run_dir, out = tiny_run
    dataset = BratsDataset(out / "phantoms")
    case = dataset.load(0)
    predictor = BratsPredictor.from_run_dir(run_dir)
    written = read_nifti(write_prediction(case, predictor.predict(case), tmp_path / "pred"))
    source = read_nifti(next((out / "phantoms").rglob(f"{case.case_id}_seg.nii.gz")))
    assert written.array.shape == source.array.shape
    np.testing.assert_allclose(written.affine, source.affine)
    # fed the reference, the writer gives the reference back, in the input's label values
    again = read_nifti(write_prediction(case, case.label, tmp_path / "ref"))
    np.testing.assert_array_equal(again.array, source.array)


def test_stats_and_metrics_commands_speak_the_documented_json(tiny_run, tmp_path):
    from cxrlab.cli.main import app

    _, out = tiny_run
    runner = CliRunner()
    stats = runner.invoke(app, ["brats", "stats", "--root", str(out / "phantoms"), "--json"])
    assert stats.exit_code == 0, stats.output
    body = json.loads(stats.stdout)
    assert body["layout"] == "brats2020" and body["labels"] == "2020" and len(body["cases"]) == 10
    assert set(next(iter(body["cases"].values()))) == {"WT", "TC", "ET"} and body["survival_rows"] > 0
    truth = tmp_path / "truth"
    truth.mkdir()
    for seg in sorted((out / "phantoms").rglob("*_seg.nii.gz"))[:3]:
        (truth / seg.name.replace("_seg", "")).write_bytes(seg.read_bytes())
    scored = runner.invoke(app, ["metrics", "brats", "--pred", str(truth), "--truth", str(truth), "--json"])
    assert scored.exit_code == 0, scored.output
    result = json.loads(scored.stdout)
    assert len(result["cases"]) == 3
    assert result["mean"]["WT"] == {"dice": 1.0, "hd95": 0.0}


def test_shipped_demo_recipe_matches_the_demo():
    from cxrlab.tasks.brats.demo import DEMO_RECIPE
    from cxrlab.config.brats import config_from_mapping, load_brats_config

    shipped = load_brats_config(REPO / "configs" / "demo_brats.yaml").to_dict()
    demo = config_from_mapping(DEMO_RECIPE).to_dict()
    assert shipped == demo
    load_brats_config(REPO / "configs" / "brats_weninger2018.yaml")


def test_survival_model_beats_predicting_the_median(tmp_path):
    """Age, tumour-brain centroid distance and region volumes (reference segmentations) predict the
    phantoms' survival better than the training-fold median. Seeds 0-4 of this setting (40 phantoms,
    32 voxels, 5-fold CV) gave model/median MSE ratios 0.27-0.42 and Spearman 0.74-0.91 (median
    baseline -0.29-0.04); the test asks for a ratio < 0.6 and Spearman > 0.5."""
    import pandas as pd

    from cxrlab.data.datasets.brats import BratsDataset
    from cxrlab.data.synthetic_brain import write_phantoms
    from cxrlab.config.brats import SurvivalConfig
    from cxrlab.tasks.brats.survival import case_features, cross_validate_survival

    write_phantoms(tmp_path / "p", layout="brats2020", n=40, size=32, seed=3)
    dataset = BratsDataset(tmp_path / "p")
    rows = []
    for case_id, row in dataset.survival.items():
        if row.days is None or row.censored or row.resection not in (None, "GTR"):
            continue
        case = dataset.load(case_id)
        rows.append({"case": case_id, **case_features(case, case.label), "days": float(row.days)})
    result = cross_validate_survival(pd.DataFrame(rows), SurvivalConfig(folds=5, seed=0))
    assert len(rows) >= 25
    assert result["model"]["mse"] < 0.6 * result["median_baseline"]["mse"], result
    assert result["model"]["spearman"] > 0.5 and result["model"]["accuracy"] > result["median_baseline"]["accuracy"]
