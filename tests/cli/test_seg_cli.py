"""``cxrlab seg train|evaluate|predict|cv`` and ``cxrlab metrics segmentation`` on SYNTHETIC phantoms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
import yaml
from typer.testing import CliRunner

from cxrlab.io import write_png
from cxrlab.io.rle import read_rle_csv

runner = CliRunner()


def cli() -> typer.Typer:
    """``cxrlab.cli.main.app``, with ``seg`` and ``metrics segmentation`` mounted if it lacks them."""
    from cxrlab.cli import metrics as metrics_cli
    from cxrlab.cli import seg
    from cxrlab.cli.main import app
    from cxrlab.cli.metrics_segmentation import register_segmentation_metrics

    has_seg = any(group.name == "seg" for group in app.registered_groups)
    has_metric = any(cmd.name == "segmentation" for cmd in metrics_cli.app.registered_commands)
    if has_seg and has_metric:
        return app
    local = typer.Typer()
    local.add_typer(seg.app, name="seg")
    metrics_app = typer.Typer()
    register_segmentation_metrics(metrics_app)
    local.add_typer(metrics_app, name="metrics")
    return local


def tiny_recipe(root: Path) -> Path:
    recipe = {
        "name": "tiny", "seed": 0,
        "phantoms": {"n": 60, "size": 64, "seed": 3, "prevalence": 0.5, "out": str(root / "phantoms")},
        "data": {"split": {"train": 0.75, "valid": 0.25, "test": 0.3}, "size": 64, "channels": 1,
                 "normalization": "unit", "batch_size": 16, "num_workers": 0},
        "unet": {"encoder": "tu-resnet10t", "pretrained": None, "decoder_channels": [16, 8, 8]},
        "train": {"phases": [{"epochs": 1, "lr": 0.003}], "accelerator": "cpu", "devices": 1},
        "gate": {"model": {"arch": "test_resnet", "head": "linear", "dropout": 0.0, "pretrained": None},
                 "data": {"size": 64, "augment": False},
                 "train": {"phases": [{"epochs": 1, "lr": 0.003}], "loss": "bce", "accelerator": "cpu",
                           "devices": 1}},
        "postprocess": {"thresholds": [0.2, 0.4, 0.5, 0.6], "gate_thresholds": [0.3, 0.5, 0.7]},
        "output": {"root": str(root / "runs"), "mlflow": False},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("segcli")
    config = tiny_recipe(root)
    result = runner.invoke(cli(), ["seg", "train", str(config)])
    assert result.exit_code == 0, result.output
    assert "run directory" in result.output
    return config, root / "runs" / "tiny"


def test_train_writes_a_run_and_evaluate_rescores_it(trained):
    _, run_dir = trained
    assert (run_dir / "metrics.json").is_file() and (run_dir / "gate" / "best_auroc.pt").is_file()
    result = runner.invoke(cli(), ["seg", "evaluate", str(run_dir), "--postprocess", "argmax",
                                   "--postprocess", "threshold:threshold=0.3", "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert set(metrics["models"]["baseline"]) == {"argmax", "threshold"}
    assert metrics["models"]["cascade"]["threshold"]["postprocess"]["threshold"] == 0.3
    test = metrics["models"]["cascade"]["argmax"]["test"]
    assert 0.0 <= test["dice_per_image"] <= 1.0 and test["n_images"] == metrics["splits"]["test"]["n_images"]
    tuned = json.loads((run_dir / "postprocess.json").read_text())     # rows not re-scored keep their tuning
    assert list(tuned["cascade"]) == ["argmax", "threshold", "tta", "triplet"]
    assert tuned["baseline"]["threshold"]["threshold"] == 0.3 and tuned["cascade"]["tta"]["tta"]
    assert "TTA + triplet" in (run_dir / "table.md").read_text()
    bad = runner.invoke(cli(), ["seg", "evaluate", str(run_dir / "nothing")])
    assert bad.exit_code == 2 and "error" in bad.output
    bad_row = runner.invoke(cli(), ["seg", "evaluate", str(run_dir), "--postprocess", "median"])
    assert bad_row.exit_code == 2 and "unknown row" in bad_row.output


def test_predict_writes_masks_overlays_and_rle(trained, tmp_path):
    config, run_dir = trained
    dicoms = sorted((config.parent / "phantoms").rglob("*.dcm"))[:3]
    result = runner.invoke(cli(), ["seg", "predict", str(run_dir), *map(str, dicoms), "--out", str(tmp_path),
                                   "--rle"])
    assert result.exit_code == 0, result.output
    rows = read_rle_csv(tmp_path / "submission.csv")
    assert sorted(rows) == sorted(p.stem for p in dicoms)
    assert len(list((tmp_path / "masks").glob("*.png"))) == 3
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 3
    assert (tmp_path / "predictions.csv").read_text().startswith("path,image_id,gate_probability")


def test_cv_writes_the_fold_table(trained, tmp_path):
    config, _ = trained
    result = runner.invoke(cli(), ["seg", "cv", str(config), "rows=[argmax, tta]", "--folds", "2",
                                   "--out", str(tmp_path / "cv")])
    assert result.exit_code == 0, result.output
    table = (tmp_path / "cv" / "cv_table.md").read_text()
    assert "2-fold cross-validation" in table and "ArgMax" in table and "TTA" in table
    assert "Dice per image: One Case + gate" in table and "(±" in table
    folds = [json.loads((tmp_path / "cv" / f"fold{k}" / "split.json").read_text())["test"]["indices"]
             for k in range(2)]
    assert not set(folds[0]) & set(folds[1]) and len(folds[0]) + len(folds[1]) == 60


def _write_masks(folder: Path, masks: dict[str, np.ndarray]) -> None:
    for name, mask in masks.items():
        write_png(folder / name, mask)


def test_metrics_segmentation_scores_png_folders(tmp_path):
    truth = {f"{k}.png": np.zeros((8, 8), dtype=bool) for k in range(3)}
    truth["0.png"][:4, :4] = True                          # 16 px
    pred = {name: mask.copy() for name, mask in truth.items()}
    pred["0.png"][:4, :2] = False                          # 8 of 16 found
    probability = np.zeros((8, 8), dtype=np.uint8)
    probability[0, 0] = 100                                # 0.39: below 0.5, above 0.3
    pred["2.png"] = probability
    _write_masks(tmp_path / "truth", truth)
    _write_masks(tmp_path / "pred", {k: v for k, v in pred.items() if k != "2.png"})
    write_png(tmp_path / "pred" / "2.png", probability)
    args = ["metrics", "segmentation", "--pred-dir", str(tmp_path / "pred"), "--truth-dir", str(tmp_path / "truth")]
    result = runner.invoke(cli(), [*args, "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    assert scores["n_images"] == 3
    assert scores["dice_per_image"] == pytest.approx((2 * 8 / (8 + 16) + 1 + 1) / 3)
    assert scores["dice_global"] == pytest.approx(2 * 8 / (8 + 16))
    assert scores["iou_global"] == pytest.approx(8 / 16)
    low = json.loads(runner.invoke(cli(), [*args, "--threshold", "0.3", "--json"]).output)
    assert low["dice_per_image"] == pytest.approx((2 * 8 / 24 + 1 + 0) / 3)      # a false positive on 2.png
    assert runner.invoke(cli(), args).exit_code == 0
    (tmp_path / "truth" / "3.png").write_bytes((tmp_path / "truth" / "1.png").read_bytes())
    missing = runner.invoke(cli(), args)
    assert missing.exit_code == 2 and "3.png" in missing.output
