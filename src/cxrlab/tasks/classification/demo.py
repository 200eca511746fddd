"""``cxrlab demo``: the whole classification pipeline on CPU in a few minutes.

Synthesizes a CheXpert-layout set of SYNTHETIC phantoms, trains a small CNN on the five
competition tasks, evaluates it on a held-out patient split (study level, DeLong CIs),
predicts a real chest radiograph shipped by pydicom-data (``RG1_UNCR.dcm``), logs the
run to MLflow, and writes ``OUT/metrics.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from cxrlab.config import load_config
from cxrlab.data.synthetic_layouts import write_dataset
from cxrlab.engine.tracking import tracking_uri
from cxrlab.errors import MissingFileError
from cxrlab.inference.classifier import predict_images
from cxrlab.report.tables import auroc_table
from cxrlab.tasks.classification.train import train
from cxrlab.utils import atomic_write_json

DEMO_CONFIG = Path(__file__).resolve().parents[4] / "configs" / "demo.yaml"


def demo_config_path() -> Path:
    """The demo recipe, ``configs/demo.yaml`` of the source checkout.

    Raises:
        MissingFileError: cxrlab was installed without its source tree.
    """
    if not DEMO_CONFIG.is_file():
        raise MissingFileError(DEMO_CONFIG, "demo recipe not found; run the demo from a source checkout "
                               "(pip install -e .)")
    return DEMO_CONFIG


def real_radiograph() -> Path:
    """pydicom-data's ``RG1_UNCR.dcm``: a real CR chest radiograph (MONOCHROME1)."""
    import data_store

    return Path(data_store.__file__).parent / "data" / "RG1_UNCR.dcm"


def run_demo(out: str | Path, n_images: int = 480, image_size: int = 128, console: Any = None,
             overrides: list[str] | None = None) -> dict[str, Any]:
    """Run the demo into ``out``; returns the contents of ``out/metrics.json``."""
    from rich.console import Console


    console = console or Console()
    out = Path(out)
    started = time.perf_counter()
    data_dir = out / "data"
    console.rule("[bold]cxrlab demo[/] — SYNTHETIC phantoms, CheXpert layout")
    if not (data_dir / "CheXpert-v1.0-small" / "train.csv").is_file():
        with console.status(f"synthesizing {n_images} phantom radiographs ({image_size} px)..."):
            write_dataset("chexpert", data_dir, n=n_images, size=image_size, seed=0, overwrite=True)
    console.print(f"phantom data: {data_dir}")
    cfg = load_config(demo_config_path(), [
        f"data.options.csv={data_dir / 'CheXpert-v1.0-small' / 'train.csv'}",
        f"data.options.root={data_dir}",
        f"output.root={out}",
        *(overrides or []),
    ])
    run_dir = out / cfg.name
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    console.print(f"training {cfg.model.arch} ({cfg.data.size} px) on CPU...")
    run_dir = train(cfg, progress=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    console.print(auroc_table(metrics, "test", "held-out test split: AUROC per task (study level)"))

    radiograph = real_radiograph()
    preds = predict_images(run_dir / "best_auroc.pt", [radiograph])
    console.print(f"\nreal radiograph {radiograph.name} (pydicom-data; the model never saw real data):")
    for column in preds.columns:
        if column.startswith("prob_"):
            console.print(f"  {column[5:]:<18} p = {preds.iloc[0][column]:.3f}")

    test = metrics["test"]
    summary = {
        "auroc": {task: report["auroc"] for task, report in test["tasks"].items()},
        "mean_auroc": test["mean_auroc"],
        "run_dir": str(run_dir),
        "n_images": n_images,
        "seconds": round(time.perf_counter() - started, 1),
        "real_radiograph": {"path": str(radiograph), **preds.iloc[0].drop("path").to_dict()},
        "data": "SYNTHETIC phantoms",
    }
    atomic_write_json(out / "metrics.json", summary)
    console.print(f"\nmean AUROC {summary['mean_auroc']:.3f} in {summary['seconds']} s; "
                  f"wrote {out / 'metrics.json'}")
    console.print(f"MLflow: mlflow ui --backend-store-uri {tracking_uri(cfg.output.root)}")
    return summary

