"""Tiny deterministic runs of the three task kinds, and their predictions on fixed images.

``make_golden()`` wrote ``golden_predictions.json`` with the prediction code as it was before
the inference layer existed (``pipelines.predict.predict_images``, ``pipelines.pneumothorax_cv.
predict_masks``, ``pipelines.screening_report.predict_screening``). The test trains the same runs
(CPU training is bit-repeatable) and checks that the predictors reproduce those numbers.

Regenerate (only when a change of outputs is intended):
    python -m tests.inference.golden
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).with_name("golden_predictions.json")


def images(root: Path) -> list[Path]:
    """Four 64 px phantom PNGs (two with a pneumothorax) and pydicom-data's real RG1_UNCR.dcm."""
    import cv2
    import data_store

    from cxrlab.data.synthetic import generate_phantom

    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, names in enumerate([(), ("pneumothorax",), ("cardiomegaly", "effusion"), ("pneumothorax",)]):
        path = root / f"phantom_{i}.png"
        cv2.imwrite(str(path), generate_phantom(np.random.default_rng(500 + i), 64, names).image)
        paths.append(path)
    paths.append(Path(data_store.__file__).parent / "data" / "RG1_UNCR.dcm")
    return paths


def train_runs(root: Path) -> dict[str, Path]:
    """Train one tiny run of each kind under ``root`` (about a minute on 2 cores)."""
    from cxrlab.config import load_config
    from cxrlab.data.synthetic_layouts import write_dataset
    from cxrlab.tasks.classification.train import train as train_classifier
    from cxrlab.config.pneumothorax import config_from_mapping
    from cxrlab.tasks.pneumothorax.train import train as train_pneumothorax
    from cxrlab.config.screening import load_screening_config
    from cxrlab.tasks.screening.pipeline import train_screening

    repo = Path(__file__).resolve().parents[2]
    runs: dict[str, Path] = {}
    chexpert = root / "chexpert"
    write_dataset("chexpert", chexpert, n=120, size=64, seed=3, overwrite=True)
    cfg = load_config(repo / "configs" / "demo.yaml", [
        f"data.options.csv={chexpert / 'CheXpert-v1.0-small' / 'train.csv'}", f"data.options.root={chexpert}",
        f"output.root={root / 'runs'}", "data.size=32", "train.phases.0.epochs=2", "output.mlflow=false",
        "name=golden_classifier"])
    runs["classifier"] = train_classifier(cfg, progress=False)

    siim = root / "siim"
    write_dataset("siim", siim, n=160, size=64, seed=4, prevalence=0.5)
    raw = {
        "name": "golden_pneumothorax", "seed": 0,
        "data": {"options": {"rle_csv": str(siim / "train-rle.csv"), "root": str(siim)},
                 "split": {"train": 0.75, "valid": 0.25, "test": 0.2}, "size": 32, "channels": 1,
                 "normalization": "unit", "clip_percentiles": None, "batch_size": 16, "num_workers": 0},
        "unet": {"encoder": "tu-test_resnet", "pretrained": None, "decoder_channels": [32, 16, 8],
                 "one_case_epoch": "match"},
        "train": {"phases": [{"epochs": 8, "lr": 0.003}], "optimizer": "adamw", "weight_decay": 1e-4,
                  "accelerator": "cpu", "devices": 1},
        "gate": {"model": {"arch": "test_resnet", "head": "concat", "dropout": 0.1, "pretrained": None},
                 "data": {"size": 32, "augment": False, "batch_size": 32},
                 "train": {"phases": [{"epochs": 2, "lr": 0.01}], "loss": "bce", "monitor": "loss",
                           "accelerator": "cpu", "devices": 1}},
        "output": {"root": str(root / "runs"), "mlflow": False},
    }
    runs["pneumothorax"] = train_pneumothorax(config_from_mapping(raw))

    from cxrlab.data.synthetic_screening import write_screening_dataset

    screening = write_screening_dataset(root / "screening", 80, 64, seed=5, seen=["pneumothorax", "effusion",
                                        "consolidation", "cardiomegaly"], unseen=["edema", "infiltrates"],
                                        valid_fraction=0.25)
    scfg = load_screening_config(repo / "configs" / "demo_screening.yaml", [
        f"data.options.csv={screening / 'labels.csv'}", "data.eval_sets={}",
        f"output.root={root / 'runs'}", "data.size=32", "train.phase1_epochs=1", "train.phase2_epochs=1",
        "train.workers=1", "model.variants=[ensemble]", "name=golden_screening"])
    runs["screening"] = train_screening(scfg)
    return runs


def predict_all(runs: dict[str, Path], paths: list[Path]) -> dict[str, object]:
    """The predictions compared with the golden file (plain JSON types)."""
    from cxrlab.inference.pneumothorax import predict_masks
    from cxrlab.inference.classifier import predict_images
    from cxrlab.inference.screening import predict_screening

    classifier = predict_images(runs["classifier"] / "best_auroc.pt", paths)
    out: dict[str, object] = {"classifier": {
        str(Path(p).name): {c[5:]: float(row[c]) for c in classifier.columns if c.startswith("prob_")}
        for p, (_, row) in zip(paths, classifier.iterrows())}}
    masks = {}
    for model in ("baseline", "cascade"):
        for pred in predict_masks(runs["pneumothorax"], paths, model=model):
            masks[f"{model}/{Path(pred.path).name}"] = {
                "mask_pixels": int(pred.mask.sum()), "shape": list(pred.mask.shape),
                "mask_sha1": hashlib.sha1(np.packbits(pred.mask)).hexdigest(),
                "gate_probability": pred.gate_probability}
    out["pneumothorax"] = masks
    screened = predict_screening(runs["screening"], paths)
    out["screening"] = {Path(r["path"]).name: {k: r[k] for k in ("decision", "abnormal_probability", "svm_score",
                                                                   "likely_diseases", "risk_group")}
                        for r in screened.to_dict(orient="records")}
    return out


def make_golden(root: Path) -> dict[str, object]:
    runs = train_runs(root)
    result = predict_all(runs, images(root / "images"))
    GOLDEN.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return result


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(make_golden(Path(tmp)), indent=1)[:3000])
