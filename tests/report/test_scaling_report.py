"""Scaling-study report: tables from a hand-made results.csv equal hand-computed values."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from cxrlab.errors import CSVFormatError, MissingFileError
from cxrlab.report.scaling import (best_models, efficientnet_scaling, load_results, model_scaling_delta,
                                   summary_by_resolution, write_report)

ROWS = [  # task, resolution, arch, arch_group, seed, best_auroc
    ("Edema", 160, "resnet50", "resnet50", 0, 0.80), ("Edema", 160, "resnet50", "resnet50", 1, 0.82),
    ("Edema", 160, "resnet152", "resnet152", 0, 0.78), ("Edema", 160, "resnet152", "resnet152", 1, 0.80),
    ("Edema", 320, "resnet50", "resnet50", 0, 0.84), ("Edema", 320, "resnet50", "resnet50", 1, 0.86),
    ("Edema", 320, "resnet152", "resnet152", 0, 0.88), ("Edema", 320, "resnet152", "resnet152", 1, 0.85),
    ("Edema", 160, "efficientnet_b0", "efficientnet", 0, 0.70),
    ("Edema", 160, "efficientnet_b0", "efficientnet", 1, 0.72),
    ("Edema", 320, "efficientnet_b3", "efficientnet", 0, 0.75),
    ("Edema", 320, "efficientnet_b3", "efficientnet", 1, 0.79),
    ("Atelectasis", 160, "densenet121", "densenet121", 0, 0.70),
    ("Atelectasis", 160, "densenet121", "densenet121", 1, 0.74),
    ("Atelectasis", 160, "densenet161", "densenet161", 0, 0.76),
    ("Atelectasis", 160, "densenet161", "densenet161", 1, 0.80),
]


@pytest.fixture
def study_dir(tmp_path):
    frame = pd.DataFrame(ROWS, columns=["task", "resolution", "arch", "arch_group", "seed", "best_auroc"])
    frame.insert(0, "key", [f"{t}-{a}-{r}px-s{s}" for t, r, a, _, s, _ in ROWS])
    frame["best_epoch"] = 3
    frame.to_csv(tmp_path / "results.csv", index=False)
    return tmp_path


def test_summary_by_resolution_matches_hand_computation(study_dir):
    summary = summary_by_resolution(load_results(study_dir)).set_index(["task", "resolution"])
    assert summary.loc[("Edema", 160)].tolist() == pytest.approx([6, 0.77, 0.0485798, 0.82], abs=1e-6)
    assert summary.loc[("Edema", 320)].tolist() == pytest.approx([6, 4.97 / 6, 0.0487511, 0.88], abs=1e-6)
    assert summary.loc[("Atelectasis", 160)].tolist() == pytest.approx([4, 0.75, 0.0416333, 0.80], abs=1e-6)


def test_model_scaling_delta_and_best_model_flags(study_dir):
    delta = model_scaling_delta(load_results(study_dir)).set_index(["task", "resolution", "family"])
    assert len(delta) == 3
    edema_160 = delta.loc[("Edema", 160, "resnet")]
    assert (edema_160["smaller"], edema_160["larger"]) == ("resnet50", "resnet152")
    assert edema_160[["delta_mean", "delta_max"]].tolist() == pytest.approx([-0.02, -0.02])
    edema_320 = delta.loc[("Edema", 320, "resnet"), ["delta_mean", "delta_max"]]
    assert edema_320.tolist() == pytest.approx([0.015, 0.02])
    assert delta.loc[("Atelectasis", 160, "densenet"), ["mean_smaller", "mean_larger", "delta_mean", "delta_max"]
                     ].tolist() == pytest.approx([0.72, 0.78, 0.06, 0.06])
    assert delta["is_best"].to_dict() == {("Edema", 160, "resnet"): False, ("Edema", 320, "resnet"): True,
                                          ("Atelectasis", 160, "densenet"): True}
    assert delta.loc[("Edema", 320, "resnet"), "best_arch"] == "resnet152"
    # Custom pairs (the demo's): no rows where one member is missing.
    assert model_scaling_delta(load_results(study_dir), {"tiny": ("resnet10t", "resnet18")}).empty


def test_efficientnet_view_and_best_models(study_dir):
    results = load_results(study_dir)
    eff = efficientnet_scaling(results).set_index(["task", "resolution"])
    assert eff.loc[("Edema", 160), ["arch", "mean", "max"]].tolist() == ["efficientnet_b0", pytest.approx(0.71),
                                                                        0.72]
    assert eff.loc[("Edema", 320), "all_models_mean"] == pytest.approx(4.97 / 6)
    assert len(eff) == 2
    best = best_models(results).set_index("task")
    assert best.loc["Edema", ["arch", "resolution", "best_auroc"]].tolist() == ["resnet152", 320, 0.88]
    assert best.loc["Atelectasis", "arch"] == "densenet161"


def test_write_report_files_and_no_engine_import(study_dir):
    paths = write_report(study_dir, extra_sections=[("Extra", "hello\n")])
    for name in ("summary_by_resolution", "model_scaling_delta", "efficientnet_scaling", "best_models"):
        assert paths[name].suffix == ".csv" and paths[name].is_file()
    for name in ("fig_resolution", "fig_model_scaling", "fig_efficientnet"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = paths["report"].read_text()
    assert "| Edema | resnet152 | 320 | 0 | 0.8800 |" in text and "## Extra" in text and "hello" in text
    written = pd.read_csv(study_dir / "model_scaling_delta.csv")
    assert written["is_best"].tolist() == [True, False, True]      # sorted: Atelectasis, Edema 160, Edema 320
    code = ("import sys, cxrlab.report.scaling, cxrlab.report.cam_grid;"
            f"cxrlab.report.scaling.write_report({str(study_dir)!r});"
            "bad = [m for m in sys.modules if m.startswith('cxrlab.engine') or m == 'lightning'];"
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_bad_results_files(tmp_path):
    with pytest.raises(MissingFileError, match="cxrlab study scaling"):
        load_results(tmp_path)
    (tmp_path / "results.csv").write_text("task,resolution,arch\nEdema,160,resnet50\n")
    with pytest.raises(CSVFormatError, match="best_auroc"):
        load_results(tmp_path)


def test_cam_grid_and_localization_of_the_best_runs(tmp_path):
    """Fig 4.5 grid and per-resolution localization from results.csv + the runs' checkpoints."""
    import torch

    from cxrlab.data.synthetic_layouts import write_dataset
    from cxrlab.data.transforms import PreprocessConfig
    from cxrlab.models import create_classifier
    from cxrlab.models.weights import save_model_checkpoint
    from cxrlab.report.cam_grid import best_runs, cam_grid, localize_best_runs

    rows = []
    cells = [(task, resolution, "resnet10t", 0.7) for task in ("Cardiomegaly", "Pleural Effusion")
             for resolution in (32, 64)]
    cells += [("Cardiomegaly", 64, "resnet14t", 0.8), ("Pleural Effusion", 32, "resnet14t", 0.6)]
    for task, resolution, arch, auroc in cells:
        key = f"{task[:4]}-{arch}-{resolution}"
        torch.manual_seed(len(rows))
        model = create_classifier(arch, num_classes=1, in_chans=1, pretrained=None)
        meta = {"labels": [task], "input_size": resolution, "normalization": "unit",
                "preprocessing": PreprocessConfig(size=resolution).to_dict()}
        save_model_checkpoint(tmp_path / "runs" / key / "best_auroc.pt", model, meta)
        rows.append({"key": key, "task": task, "resolution": resolution, "arch": arch, "seed": 0,
                     "best_auroc": auroc, "run_dir": f"runs/{key}"})
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    best = best_runs(load_results(tmp_path))
    assert best.set_index(["task", "resolution"])["arch"].to_dict() == {
        ("Cardiomegaly", 32): "resnet10t", ("Cardiomegaly", 64): "resnet14t",
        ("Pleural Effusion", 32): "resnet10t", ("Pleural Effusion", 64): "resnet10t"}

    nih = write_dataset("nih", tmp_path / "nih", n=8, size=64, seed=5, prevalence=0.6, bbox_fraction=1.0)
    png = cam_grid(tmp_path, nih / "BBox_List_2017.csv", nih / "images", tmp_path / "grid.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    cells = pd.read_csv(tmp_path / "grid.csv")     # what each cell's caption says
    assert cells[["class", "resolution", "arch", "feature_map"]].values.tolist() == [
        ["Cardiomegaly", 32, "resnet10t", "1x1"], ["Cardiomegaly", 64, "resnet14t", "2x2"],
        ["Pleural Effusion", 32, "resnet10t", "1x1"], ["Pleural Effusion", 64, "resnet10t", "2x2"]]
    assert cells["probability"].between(0, 1).all() and cells["best_auroc"].tolist() == [0.7, 0.8, 0.7, 0.7]
    scores = localize_best_runs(tmp_path, nih / "BBox_List_2017.csv", nih / "images", n_boot=50)
    assert scores[["class", "resolution", "arch"]].values.tolist() == [
        ["Cardiomegaly", 32, "resnet10t"], ["Cardiomegaly", 64, "resnet14t"],
        ["Pleural Effusion", 32, "resnet10t"], ["Pleural Effusion", 64, "resnet10t"]]
    energy = scores["energy_in_box_mean"]
    assert ((energy >= 0) & (energy <= 1) | energy.isna()).all()
    # 32 px gives a 1 x 1 feature map: a constant map, normalised to zero everywhere.
    at_32 = scores[scores["resolution"] == 32]
    assert (at_32["n_empty_maps"] == at_32["n"]).all()
    assert (tmp_path / "localization_best_runs.csv").is_file()
