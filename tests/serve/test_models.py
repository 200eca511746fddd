"""The model adapters agree with the pipelines' own predictions, and the API serves their results.

The pneumothorax and screening run directories are assembled from untrained tiny
networks with the pipelines' own writers (checkpoints, tuned post-processing, SVM,
operating point, recipe), so the adapters are checked against
``pneumothorax_cv.predict_masks`` and ``screening_report.predict_screening`` on exactly
the files those functions read.
"""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cxrlab.serve.app import StudyResult, create_app
from cxrlab.inference.pneumothorax import PneumothoraxPredictor
from cxrlab.inference.screening import ScreeningPredictor
from cxrlab.serve.models import ModelSet


DISEASES = ["Pneumothorax", "Cardiomegaly"]


@pytest.fixture(scope="module")
def pneumothorax_run(tmp_path_factory, serve_models_dir):
    """gate/ (a classifier whose labels include Pneumothorax), one_case/best.pt, postprocess.json."""
    import shutil

    import torch

    from cxrlab.data.transforms import PreprocessConfig
    from cxrlab.models.segmentation import create_unet, save_segmentation_checkpoint

    run = tmp_path_factory.mktemp("ptx_run")
    (run / "gate").mkdir()
    shutil.copy(serve_models_dir / "clf.pt", run / "gate" / "best_auroc.pt")
    torch.manual_seed(1)
    unet = create_unet("tu-resnet10t", in_chans=1, classes=2, decoder_channels=(16, 8, 8), encoder_depth=3)
    with torch.no_grad():                      # bias the foreground so some pixels pass the threshold
        unet.unet.segmentation_head[0].bias.copy_(torch.tensor([0.0, 0.05]))
    save_segmentation_checkpoint(run / "one_case" / "best.pt", unet.eval(),
                                 {"preprocessing": PreprocessConfig(size=64).to_dict(), "normalization": "unit",
                                  "role": "one_case"})
    post = {"method": "threshold", "tta": True, "threshold": 0.5, "min_area": 0, "gate_threshold": 0.0}
    (run / "postprocess.json").write_text(json.dumps({"cascade": {"tta": {**post, "valid_score": 0.7}}}))
    return run


@pytest.fixture(scope="module")
def screening_run(tmp_path_factory):
    """config.yaml, ensemble/model_<disease>.pt, ensemble/svm.pkl and operating_point.json."""
    import torch
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from cxrlab.models.multitask import MultiTaskNet, save_multitask_checkpoint
    from cxrlab.config.screening import save_screening_config, screening_config_from_dict, slug

    run = tmp_path_factory.mktemp("screen_run")
    cfg = screening_config_from_dict({
        "name": "tiny_screen", "data": {"dataset": "generic", "diseases": DISEASES, "size": 64},
        "model": {"encoder": "resnet10t", "pretrained": None, "decoder_channels": [16, 8, 8, 8, 8],
                  "variants": ["ensemble"]}})
    save_screening_config(cfg, run / "config.yaml")
    torch.manual_seed(2)
    for disease in DISEASES:
        net = MultiTaskNet("resnet10t", num_classes=3, in_chans=1, decoder_channels=(16, 8, 8, 8, 8))
        save_multitask_checkpoint(run / "ensemble" / f"model_{slug(disease)}.pt", net.eval(), {"disease": disease})
    rng = np.random.default_rng(0)
    features, truth = rng.normal(size=(40, 6)), np.r_[np.zeros(20), np.ones(20)].astype(int)
    features[truth == 1] += 0.5
    svm = make_pipeline(StandardScaler(), SVC()).fit(features, truth)
    (run / "ensemble" / "svm.pkl").write_bytes(pickle.dumps(svm))
    point = {"threshold": -5.0, "target_sensitivity": 0.99, "sensitivity": 1.0, "specificity": 0.1,
             "platt_a": 1.5, "platt_b": 0.2, "n": 40}
    (run / "ensemble" / "operating_point.json").write_text(json.dumps(point))
    return run


def test_pneumothorax_predictor_one_image_matches_the_batch_path(pneumothorax_run, phantom_images):
    """The service predicts one image at a time; `seg predict` in batches: the same masks."""
    from cxrlab.inference.pneumothorax import predict_masks
    from cxrlab.io import read_image

    adapter = PneumothoraxPredictor.from_run_dir(pneumothorax_run)
    assert adapter.model_name == "cascade" and adapter.row == "tta" and adapter.gate is not None
    batch = predict_masks(pneumothorax_run, phantom_images[:4], batch_size=4)
    for path, expected in zip(phantom_images[1:3], batch[1:3]):
        pixels = read_image(path).pixels
        mask, probability = adapter.predict(pixels)
        assert mask.shape == pixels.shape == expected.mask.shape
        assert np.array_equal(mask, expected.mask)
        assert probability == pytest.approx(expected.gate_probability, abs=1e-6)
    assert expected.mask.any(), "the biased U-Net should mark some pixels"


def test_screening_predictor_matches_the_file_path(screening_run, phantom_images):
    from cxrlab.inference.screening import predict_screening
    from cxrlab.io import read_image

    adapter = ScreeningPredictor.from_run_dir(screening_run)
    assert adapter.variant == "ensemble" and adapter.diseases == DISEASES
    expected = predict_screening(screening_run, phantom_images[:3])
    for path, (_, row) in zip(phantom_images[:3], expected.iterrows()):
        got = adapter.predict(read_image(path).pixels)
        assert got["decision"] == row["decision"] and got["risk_group"] == row["risk_group"]
        assert got["probability"] == pytest.approx(row["abnormal_probability"], abs=1e-6)
        assert got["svm_score"] == pytest.approx(row["svm_score"], abs=1e-6)
        likely = ";".join(f"{d['disease']}={d['probability']:.3f}" for d in got["likely_diseases"])
        assert likely == row["likely_diseases"]


def test_api_with_every_model(make_settings, serve_checkpoint, pneumothorax_run, screening_run, phantom_images,
                              auth, upload):
    from cxrlab.io.rle import rle_decode

    models = ModelSet(serve_checkpoint, screening=screening_run, pneumothorax=pneumothorax_run)
    assert set(models.versions()) == {"classifier", "screening", "pneumothorax"}
    with TestClient(create_app(make_settings(), models=models)) as client:
        body = StudyResult.model_validate(upload(client, phantom_images[1]).json()).model_dump()
        screening, ptx = body["screening"], body["pneumothorax"]
        assert screening["decision"] == "abnormal" and screening["threshold"] == -5.0
        assert screening["risk_group"] in ("critical", "urgent", "non-urgent", "cardiomegaly", "unspecified")
        assert ptx["present"] is True and ptx["width"] == ptx["height"] == 96
        assert body["priority"]["group"] == "critical"       # the cascade found a mask
        png = client.get(ptx["mask_url"], headers=auth)
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        mask = np.array(Image.open(io.BytesIO(png.content))) > 0
        assert mask.shape == (96, 96)
        assert np.array_equal(rle_decode(ptx["rle"], width=96, height=96), mask)
        assert ptx["area_fraction"] == pytest.approx(mask.mean())
        assert body["models"]["pneumothorax"]["model"] == "cascade"
        assert body["models"]["screening"]["variant"] == "ensemble"
