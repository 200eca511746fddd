"""``cxrlab explain CHECKPOINT IMAGE...`` and ``cxrlab explain localize`` through the CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import typer
from typer.testing import CliRunner

from cxrlab.cli import explain as explain_cli
from cxrlab.cli.main import app as main_app

runner = CliRunner()
LABELS = ["Cardiomegaly", "Pleural Effusion"]


def _app() -> typer.Typer:
    """The top-level app once `explain` is registered there; until then, the sub-app alone."""
    if any(group.name == "explain" for group in main_app.registered_groups):
        return main_app
    app = typer.Typer()
    app.add_typer(explain_cli.app, name="explain")
    return app


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from cxrlab.data.transforms import PreprocessConfig
    from cxrlab.models import create_classifier
    from cxrlab.models.weights import save_model_checkpoint

    torch.manual_seed(0)
    model = create_classifier("resnet10t", num_classes=2, in_chans=1, pretrained=None)
    meta = {"labels": LABELS, "input_size": 64, "preprocessing": PreprocessConfig(size=64).to_dict(),
            "normalization": "unit"}
    return save_model_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", model, meta)


@pytest.fixture(scope="module")
def nih_phantoms(tmp_path_factory):
    from cxrlab.data.synthetic_layouts import write_dataset

    return write_dataset("nih", tmp_path_factory.mktemp("nih") / "nih", n=10, size=64, seed=3, prevalence=0.6,
                         bbox_fraction=1.0)


def test_default_command_explains_images(tmp_path, checkpoint, nih_phantoms, rg1_dir):
    images = sorted((nih_phantoms / "images").glob("*.png"))[:2]
    out = tmp_path / "maps"
    args = ["explain", str(checkpoint), *map(str, images), str(rg1_dir / "RG1_UNCR.dcm"), "--out", str(out),
            "--method", "gradcam++", "--target", "Pleural Effusion"]
    result = runner.invoke(_app(), args)
    assert result.exit_code == 0, result.output
    manifest = pd.read_csv(out / "explanations.csv")
    assert len(manifest) == 3 and set(manifest["label"]) == {"Pleural Effusion"}
    assert "RG1_UNCR__pleural_effusion__gradcampp.png" in set(manifest["overlay"])   # a real CR radiograph
    for row in manifest.itertuples():
        assert (out / row.overlay).is_file() and np.load(out / row.map).shape == (64, 64)
    assert "2x2" in result.output and "wrote 3 overlay(s)" in result.output
    # The explicit subcommand name is the same command; every class by default.
    result = runner.invoke(_app(), ["explain", "images", str(checkpoint), str(images[0]), "--out",
                                    str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert sorted(pd.read_csv(tmp_path / "b" / "explanations.csv")["label"]) == LABELS


def test_localize_subcommand(tmp_path, checkpoint, nih_phantoms):
    out = tmp_path / "loc"
    args = ["explain", "localize", str(checkpoint), "--boxes", str(nih_phantoms / "BBox_List_2017.csv"),
            "--images", str(nih_phantoms / "images"), "--out", str(out), "--no-overlays"]
    result = runner.invoke(_app(), args)
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(out / "localization_summary.csv")
    per_image = pd.read_csv(out / "localization_per_image.csv")
    assert set(summary["class"]) <= set(LABELS) and summary["n"].sum() == len(per_image) > 0
    assert set(per_image["label"]) <= {"Cardiomegaly", "Effusion"}          # NIH names mapped to the model's
    assert "vs boxes: per class (95% CI)" in result.output and not (out / "overlays").exists()


def test_errors_and_help(tmp_path, checkpoint, nih_phantoms):
    image = sorted((nih_phantoms / "images").glob("*.png"))[0]
    base = ["explain", str(checkpoint), str(image), "--out", str(tmp_path)]
    result = runner.invoke(_app(), [*base, "--method", "x"])
    assert result.exit_code == 2 and "unknown CAM method" in result.output
    result = runner.invoke(_app(), [*base, "--target", "Edema"])
    assert result.exit_code == 2 and "unknown class" in result.output
    result = runner.invoke(_app(), ["explain", "localize", str(checkpoint), "--boxes",
                                    str(nih_phantoms / "BBox_List_2017.csv"), "--images", str(tmp_path / "none"),
                                    "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "image folder not found" in result.output
    result = runner.invoke(_app(), ["explain", "--help"])
    assert result.exit_code == 0 and "localize" in result.output and "images" in result.output
