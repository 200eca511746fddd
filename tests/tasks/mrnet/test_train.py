"""End to end on SYNTHETIC phantoms: train (Lightning), combine, evaluate, predict, resume, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from cxrlab.cli.main import app
from cxrlab.config.mrnet import load_mrnet_config
from cxrlab.tasks.mrnet.train import train

# One run serves the mechanics and the acceptance test: the sagittal ACL network, three epochs of AlexNet
# from scratch on 24 exams (6 more pick the checkpoint and the threshold), scored on 20 held-out exams.
ACCEPT_AUROC = 0.8
"""Held-out AUROC of the ACL network (combined = sagittal here) on the phantoms. Measured with this fixture's
settings for seeds 0-5 (seed and phantoms.seed, 2026-12-06): 0.912, 0.960, 1.000, 0.912, 0.947, 0.952, i.e.
0.91-1.00 on 20 held-out exams; chance is 0.5."""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mrnet")
    cfg = load_mrnet_config("configs/demo_mrnet.yaml", [
        "tasks=[acl]", "planes=[sagittal]", "train.epochs=3", "phantoms.n_train=30", "phantoms.n_valid=20",
        f"output.root={root}", "name=acl"])
    assert cfg.train.threads == 1
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_dir = train(cfg)
        # train.threads applies to the training only: the caller's setting comes back (a changed
        # thread count leaked into later tests and changed their floating-point results)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    return run_dir


def test_the_acl_network_separates_torn_from_intact_phantoms(run):
    scores = json.loads((run / "metrics.json").read_text())["tasks"]["acl"]
    assert scores["sagittal"]["auroc"] >= ACCEPT_AUROC, scores["sagittal"]
    assert scores["combined"]["auroc"] >= ACCEPT_AUROC, scores["combined"]
    predictions = pd.read_csv(run / "predictions_valid.csv")
    torn, intact = predictions.loc[predictions["acl"] == 1, "acl_sagittal"], predictions.loc[
        predictions["acl"] == 0, "acl_sagittal"]
    assert torn.median() > intact.median()          # not a constant output
    split = json.loads((run / "split.json").read_text())
    assert 0 < split["tune"]["acl"] < split["tune"]["exams"]            # stratified: both classes tune
    combine = json.loads((run / "combine.json").read_text())["acl"]
    assert combine["threshold_from"].startswith("youden") and set(combine["thresholds"]) == {"sagittal", "combined"}


def test_run_folder(run):
    for name in ("config.yaml", "split.json", "landmarks.json", "combine.json", "metrics.json", "table.md",
                 "predictions_train.csv", "predictions_valid.csv", "acl/sagittal/last.ckpt",
                 "acl/sagittal/history.csv", "acl/sagittal/done.json", "curves/roc_acl_combined.csv"):
        assert (run / name).is_file(), name
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    split = json.loads((run / "split.json").read_text())
    assert not set(split["valid"]["ids"]) & (set(split["train"]["ids"]) | set(split["tune"]["ids"]))
    assert "| acl |" in (run / "table.md").read_text()


def test_metrics_are_computed_on_the_held_out_exams(run):
    metrics = json.loads((run / "metrics.json").read_text())
    scores = metrics["tasks"]["acl"]["combined"]
    predictions = pd.read_csv(run / "predictions_valid.csv")
    assert scores["n"] == len(predictions) == 20
    assert scores["positives"] == int(predictions["acl"].sum())
    called = predictions["acl_combined"] >= scores["threshold"]
    truth = predictions["acl"] == 1
    assert scores["sensitivity"] == pytest.approx((called & truth).sum() / truth.sum())
    assert scores["accuracy"] == pytest.approx((called == truth).mean())
    assert scores["auroc_ci_low"] <= scores["auroc"] <= scores["auroc_ci_high"]


def test_logistic_regression_is_stored_and_reused_by_predict(run, tmp_path):
    combine = json.loads((run / "combine.json").read_text())["acl"]
    assert combine["planes"] == ["sagittal"] and combine["fitted_on"] == "train"
    phantoms = run.parent / "phantoms" / "MRNet-v1.0"
    out = tmp_path / "pred.csv"
    result = CliRunner().invoke(app, ["mrnet", "predict", str(run), "0000", "0001", "--root", str(phantoms),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    first = pd.read_csv(out)
    z = combine["intercept"] + combine["coef"][0] * first["acl_sagittal"]
    expected = 1 / (1 + (-z).map(math.exp))
    pd.testing.assert_series_equal(first["acl_combined"], expected, check_names=False, atol=1e-5, check_exact=False)
    edited = json.loads((run / "combine.json").read_text())
    edited["acl"]["intercept"] += 3.0
    (run / "combine.json").write_text(json.dumps(edited))
    try:
        CliRunner().invoke(app, ["mrnet", "predict", str(run), "0000", "--root", str(phantoms), "--out", str(out)])
        assert pd.read_csv(out)["acl_combined"][0] > first["acl_combined"][0]
    finally:
        edited["acl"]["intercept"] -= 3.0
        (run / "combine.json").write_text(json.dumps(edited))


def test_resume_skips_finished_networks_and_existing_run_is_refused(run):
    cfg = load_mrnet_config(run / "config.yaml")
    before = (run / "acl" / "sagittal" / "best_loss.pt").stat().st_mtime
    train(cfg, resume=True)
    assert (run / "acl" / "sagittal" / "best_loss.pt").stat().st_mtime == before
    from cxrlab.errors import ConfigError

    with pytest.raises(ConfigError, match="--resume"):
        train(cfg)


def test_stats_cli_json(run):
    phantoms = run.parent / "phantoms" / "MRNet-v1.0"
    result = CliRunner().invoke(app, ["mrnet", "stats", "--root", str(phantoms), "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["train"]["exams"] == 30 and stats["valid"]["exams"] == 20
    assert set(stats["train"]["slices"]) == {"axial", "coronal", "sagittal"}


def test_cam_of_the_top_slice(run):
    from cxrlab.data.datasets.mrnet import read_exam
    from cxrlab.inference.mrnet import MRNetPredictor
    from cxrlab.tasks.mrnet.evaluate import top_slice_cam

    predictor = MRNetPredictor.from_run_dir(run)
    _, volumes = read_exam("0000", run.parent / "phantoms")
    top, cam = top_slice_cam(predictor, volumes, "acl", "sagittal")
    assert 0 <= top < volumes["sagittal"].num_slices
    assert cam.map.shape == (64, 64) and 0.0 <= cam.map.min() <= cam.map.max() <= 1.0
    valid_ids = json.loads((run / "split.json").read_text())["valid"]["ids"]
    saved = np.load(run / "cams" / f"{valid_ids[0]}_acl_sagittal.npz")      # written by evaluate for the page
    _, first = read_exam(valid_ids[0], run.parent / "phantoms")
    assert int(saved["slice"]) == top_slice_cam(predictor, first, "acl", "sagittal")[0]
    assert saved["map"].shape == (64, 64)


def test_predict_reads_an_exam_as_dicom_series_like_its_npy(run, tmp_path):
    from cxrlab.data.datasets.mrnet import open_mrnet
    from cxrlab.data.synthetic_knee import write_dicom_exam

    phantoms = run.parent / "phantoms" / "MRNet-v1.0"
    valid = open_mrnet(phantoms, "valid")
    write_dicom_exam({p: v.array for p, v in valid.volumes(0).items()}, tmp_path / "knee", valid.ids[0])
    out = tmp_path / "both.csv"
    result = CliRunner().invoke(app, ["mrnet", "predict", str(run), valid.ids[0], str(tmp_path / "knee"),
                                      "--root", str(phantoms), "--out", str(out)])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out)
    assert frame["exam"].tolist() == [valid.ids[0], "knee"]
    assert frame["acl_sagittal"][0] == pytest.approx(frame["acl_sagittal"][1], abs=1e-6)
