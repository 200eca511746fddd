"""``cxrlab export`` and the ONNX backends of the predictors, on the tiny golden runs.

Each run kind is exported once (module fixture); the predict commands with ``--backend
onnx`` must give the torch backend's findings, corrupt or foreign ONNX files are named in
the error, and the INT8 acceptance keeps or refuses a quantized classifier by its
validation AUROC.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrlab import __version__
from cxrlab.cli.main import app
from cxrlab.errors import ConfigError, MissingFileError, OnnxModelError
from cxrlab.inference.backends import OnnxBackend, exported_path
from cxrlab.inference.base import file_version
from cxrlab.inference.classifier import ClassifierPredictor, predict_images
from cxrlab.inference.export import export_run, parity_images, quantize_classifier
from cxrlab.inference.pneumothorax import predict_masks
from cxrlab.inference.screening import predict_screening

runner = CliRunner()


@pytest.fixture(scope="module")
def runs(golden_runs, tmp_path_factory):
    """Copies of the golden runs (exports are written into them), with their exports."""
    runs, paths = golden_runs
    root = tmp_path_factory.mktemp("export")
    copies = {kind: shutil.copytree(run, root / kind) for kind, run in runs.items()}
    cli = runner.invoke(app, ["export", str(copies["classifier"])])
    assert cli.exit_code == 0, cli.output
    results = {"classifier": cli.output}
    images = parity_images(64)
    for kind in ("pneumothorax", "screening"):
        results[kind] = export_run(copies[kind], images=images)
    return copies, paths, results


def test_classifier_export_prints_parity_and_carries_the_run_metadata(runs):
    copies, _, results = runs
    assert "max abs difference of probabilities" in results["classifier"]
    assert "RG1_UNCR.dcm" in results["classifier"]
    checkpoint = copies["classifier"] / "best_auroc.pt"
    predictor = ClassifierPredictor.from_run_dir(checkpoint)
    meta = OnnxBackend(exported_path(checkpoint)).metadata
    assert meta["labels"] == predictor.labels
    assert meta["thresholds"] == pytest.approx(predictor.thresholds)
    assert meta["model_version"] == file_version([checkpoint])
    assert meta["input_shape"] == list(predictor.input_shape())
    assert meta["preprocessing"] == predictor.meta["preprocessing"]
    assert meta["normalization"] == predictor.meta["normalization"]
    assert (meta["cxrlab_version"], meta["precision"]) == (__version__, "fp32")


def test_every_network_of_the_pneumothorax_and_screening_runs_is_exported(runs):
    copies, _, results = runs
    assert {r.name for r in results["pneumothorax"]} == {"gate", "baseline", "one_case"}
    assert {r.name for r in results["screening"]} == {f"ensemble/{p.stem}" for p in
                                                      (copies["screening"] / "ensemble").glob("model_*.pt")}
    for result in results["pneumothorax"] + results["screening"]:
        assert result.path.is_file() and result.max_diff <= 1e-4, result
    unet = OnnxBackend(copies["pneumothorax"] / "one_case" / "export" / "best.onnx").metadata
    assert unet["model"] == "cascade" and unet["postprocess"]  # the tuned rows travel with the U-Net


def test_dynamic_batch_axis(runs):
    copies, _, _ = runs
    backend = OnnxBackend(exported_path(copies["classifier"] / "best_auroc.pt"))
    shape = tuple(backend.metadata["input_shape"])
    for n in (1, 3):
        assert backend(np.zeros((n, *shape), np.float32)).shape[0] == n


def test_predict_with_onnx_gives_the_torch_findings(runs, tmp_path):
    copies, paths, _ = runs
    out = tmp_path / "onnx.csv"
    cli = runner.invoke(app, ["predict", str(copies["classifier"]), *map(str, paths), "--backend", "onnx",
                              "--out", str(out)])
    assert cli.exit_code == 0, cli.output
    onnx_frame = pd.read_csv(out)
    torch_frame = predict_images(copies["classifier"], paths)
    probs = [c for c in torch_frame.columns if c.startswith("prob_")]
    np.testing.assert_allclose(onnx_frame[probs].to_numpy(), torch_frame[probs].to_numpy(), atol=1e-4)
    preds = [c for c in torch_frame.columns if c.startswith("pred_")]
    assert (onnx_frame[preds].to_numpy() == torch_frame[preds].to_numpy()).all()


def test_seg_predict_with_onnx_gives_the_torch_masks(runs, tmp_path):
    copies, paths, _ = runs
    cli = runner.invoke(app, ["seg", "predict", str(copies["pneumothorax"]), *map(str, paths), "--backend", "onnx",
                              "--out", str(tmp_path)])
    assert cli.exit_code == 0, cli.output
    onnx_rows = pd.read_csv(tmp_path / "predictions.csv")
    torch_preds = predict_masks(copies["pneumothorax"], paths, model="cascade")
    assert onnx_rows["mask_pixels"].tolist() == [int(p.mask.sum()) for p in torch_preds]
    np.testing.assert_allclose(onnx_rows["gate_probability"], [p.gate_probability for p in torch_preds], atol=1e-4)
    baseline = predict_masks(copies["pneumothorax"], paths, model="baseline", backend="onnx")
    for got, want in zip(baseline, predict_masks(copies["pneumothorax"], paths, model="baseline")):
        assert np.array_equal(got.mask, want.mask)


def test_screen_predict_with_onnx_gives_the_torch_decisions(runs, tmp_path):
    copies, paths, _ = runs
    out = tmp_path / "screen.csv"
    cli = runner.invoke(app, ["screen", "predict", str(copies["screening"]), *map(str, paths), "--backend", "onnx",
                              "--out", str(out)])
    assert cli.exit_code == 0, cli.output
    got = pd.read_csv(out)
    want = predict_screening(copies["screening"], paths)
    assert got["decision"].tolist() == want["decision"].tolist()
    assert got["risk_group"].tolist() == want["risk_group"].tolist()
    np.testing.assert_allclose(got["abnormal_probability"], want["abnormal_probability"], atol=1e-4)


def test_missing_corrupt_and_foreign_onnx_files_are_named(runs, tmp_path):
    copies, _, _ = runs
    bare = shutil.copytree(copies["classifier"], tmp_path / "bare", ignore=shutil.ignore_patterns("export"))
    with pytest.raises(MissingFileError, match=r"best_auroc\.onnx.*cxrlab export"):
        ClassifierPredictor.from_run_dir(bare, backend="onnx")
    with pytest.raises(MissingFileError, match=r"best_auroc\.int8\.onnx.*--quantize int8"):
        ClassifierPredictor.from_run_dir(bare, backend="onnx-int8")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(exported_path(copies["classifier"] / "best_auroc.pt").read_bytes()[:200])
    with pytest.raises(OnnxModelError, match="corrupt.onnx"):
        ClassifierPredictor.from_run_dir(copies["classifier"], backend="onnx", onnx_path=corrupt)
    model = onnx.load(str(exported_path(copies["classifier"] / "best_auroc.pt")))
    for prop in model.metadata_props:
        if prop.key == "model_version":
            prop.value = json.dumps("0123456789ab")
    foreign = tmp_path / "foreign.onnx"
    onnx.save(model, str(foreign))
    with pytest.raises(OnnxModelError, match=r"foreign\.onnx.*model_version.*0123456789ab"):
        ClassifierPredictor.from_run_dir(copies["classifier"], backend="onnx", onnx_path=foreign)
    # The gate's export in place of the classifier's: another model, named.
    (bare / "export").mkdir()
    shutil.copy(next((copies["pneumothorax"] / "gate" / "export").glob("*.onnx")), bare / "export" / "best_auroc.onnx")
    with pytest.raises(OnnxModelError, match=r"best_auroc\.onnx.*(model_version|input shape)"):
        ClassifierPredictor.from_run_dir(bare, backend="onnx")
    cli = runner.invoke(app, ["predict", str(copies["classifier"]), "x.png", "--backend", "tensorrt"])
    assert cli.exit_code == 2 and "onnx-int8" in cli.output


def test_parity_failure_writes_nothing(runs, tmp_path):
    copies, _, _ = runs
    # A negative tolerance no difference can meet stands in for a broken export.
    with pytest.raises(OnnxModelError, match="parity check failed"):
        export_run(copies["screening"], out=tmp_path / "out", tolerance=-1.0, images=parity_images(64))
    assert not list((tmp_path / "out").rglob("*.onnx"))
    with pytest.raises(ConfigError, match="networks"):
        export_run(copies["pneumothorax"], out=tmp_path / "one.onnx")


def test_int8_is_kept_or_refused_by_the_validation_auroc(runs):
    from cxrlab.cli.export import _classifier_validation

    copies, paths, _ = runs
    batches, labels = _classifier_validation(copies["classifier"])
    int8 = exported_path(copies["classifier"] / "best_auroc.pt", int8=True)
    with pytest.raises(OnnxModelError, match=r"INT8 refused: validation AUROC fp32 0\.\d+, int8 0\.\d+"):
        quantize_classifier(copies["classifier"], batches, labels, tolerance=0.0)
    assert not int8.exists()
    decision = quantize_classifier(copies["classifier"], batches, labels, tolerance=1.0)
    assert decision.accepted and int8.is_file()
    assert OnnxBackend(int8).metadata["precision"] == "int8"
    predictor = ClassifierPredictor.from_run_dir(copies["classifier"], backend="onnx-int8")
    torch_probs = ClassifierPredictor.from_run_dir(copies["classifier"]).predict_paths(paths)
    int8_probs = predictor.predict_paths(paths)
    probs = [c for c in torch_probs.columns if c.startswith("prob_")]
    assert np.abs(int8_probs[probs].to_numpy() - torch_probs[probs].to_numpy()).max() < 0.1


def test_service_model_set_runs_the_onnx_files(runs):
    from cxrlab.serve.models import ModelSet

    copies, paths, _ = runs
    onnx_set = ModelSet(copies["classifier"], screening=copies["screening"], pneumothorax=copies["pneumothorax"],
                        backend="onnx")
    assert {v["backend"] for v in onnx_set.versions().values()} == {"onnx"}
    torch_set = ModelSet(copies["classifier"], screening=copies["screening"], pneumothorax=copies["pneumothorax"])
    got, want = onnx_set.analyze(paths[1]), torch_set.analyze(paths[1])
    assert [f["label"] for f in got.findings] == [f["label"] for f in want.findings]
    np.testing.assert_allclose([f["probability"] for f in got.findings], [f["probability"] for f in want.findings],
                               atol=1e-4)
    assert got.screening["decision"] == want.screening["decision"]
    assert got.pneumothorax["area_fraction"] == want.pneumothorax["area_fraction"]
