"""``cxrlab data synth``: writes a synthetic dataset, prints a summary, guards --out."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cxrlab.cli.main import app

runner = CliRunner()


def synth(out, *extra: str):
    return runner.invoke(app, ["data", "synth", "--layout", "generic", "--n", "8", "--size",
                               "48", "--seed", "2", "--out", str(out), "--no-progress", *extra])


def test_synth_writes_dataset_and_prints_counts(tmp_path):
    out = tmp_path / "phantoms"
    result = synth(out)
    assert result.exit_code == 0, result.output
    assert "wrote 8 synthetic generic images of 48 x 48 px" in result.output
    assert "not real patients" in result.output
    manifest = json.loads((out / "synthetic_manifest.json").read_text(encoding="utf-8"))
    assert manifest["n"] == 8 and manifest["seed"] == 2 and manifest["size"] == 48
    assert len(list((out / "images").glob("*.png"))) == 8
    for finding, count in manifest["counts"].items():
        assert f"{finding}" in result.output
        assert any(line.split("│")[1:3] == [f" {finding:<13} ", f" {count:<6} "]
                   for line in result.output.splitlines() if "│" in line), finding


def test_synth_refuses_nonempty_out_without_overwrite(tmp_path):
    out = tmp_path / "phantoms"
    assert synth(out).exit_code == 0
    before = (out / "labels.csv").read_bytes()
    result = synth(out, "--seed", "3")
    assert result.exit_code == 2
    assert "not empty" in result.output and "--overwrite" in result.output
    assert (out / "labels.csv").read_bytes() == before
    result = synth(out, "--seed", "3", "--overwrite", "--prevalence", "0.5")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "synthetic_manifest.json").read_text(encoding="utf-8"))
    assert manifest["seed"] == 3 and manifest["counts"]["edema"] == 4


def test_synth_other_layout_and_errors(tmp_path):
    result = runner.invoke(app, ["data", "synth", "--layout", "siim", "--n", "4", "--size",
                                 "32", "--seed", "0", "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s" / "train-rle.csv").read_text().startswith("ImageId, EncodedPixels")
    result = runner.invoke(app, ["data", "synth", "--layout", "padchest", "--n", "4",
                                 "--out", str(tmp_path / "p")])
    assert result.exit_code == 2 and "unknown layout 'padchest'" in result.output
    result = runner.invoke(app, ["data", "synth", "--layout", "nih", "--n", "1",
                                 "--out", str(tmp_path / "p")])
    assert result.exit_code == 2 and ">= 2" in result.output
    assert not (tmp_path / "p").exists()
