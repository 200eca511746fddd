"""``cxrlab export RUN_DIR``: a run's networks to ONNX (parity-checked), optionally INT8;
and the ``--backend`` / ``--providers`` options the predict commands share."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from cxrlab.cli.errors import require_extra, user_errors
from cxrlab.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

console = Console()

BACKEND_HELP = ("torch (default), onnx (the files `cxrlab export RUN_DIR` wrote, run by ONNX Runtime) "
                "or onnx-int8 (`cxrlab export RUN_DIR --quantize int8`).")
PROVIDERS_HELP = ("ONNX Runtime execution providers in order of preference, comma-separated "
                  "(e.g. CUDAExecutionProvider,CPUExecutionProvider; default CPU; unavailable ones are skipped).")


def backend_choice(backend: str, providers: str | None) -> tuple[str, list[str] | None]:
    """Check ``--backend`` (and that ONNX Runtime is installed for it); split ``--providers``."""
    from cxrlab.inference.backends import BACKENDS

    if backend not in BACKENDS:
        raise ConfigError("--backend", f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend != "torch":
        require_extra("onnx", "onnx", "onnxruntime")
    elif providers:
        raise ConfigError("--providers", "execution providers apply to --backend onnx or onnx-int8")
    names = [p.strip() for p in (providers or "").split(",") if p.strip()]
    return backend, names or None


def _classifier_validation(run_dir: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """The validation split's model inputs (batches) and labels of a classification run."""
    import dataclasses

    import numpy as np

    from cxrlab.config import load_config
    from cxrlab.errors import MissingFileError
    from cxrlab.tasks.classification.data import make_loader, prepare_data

    config = run_dir / "config.yaml"
    if not config.is_file():
        raise MissingFileError(config, "INT8 needs the run's recipe to find its validation split")
    cfg = load_config(config)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, num_workers=0))
    prepared = prepare_data(cfg)
    if "valid" not in prepared.splits:
        raise ConfigError(str(run_dir), "the run has no validation split to calibrate and judge INT8 with")
    batches, index = [], []
    for batch in make_loader(prepared, "valid", cfg, train=False):
        batches.append(batch["image"].numpy())
        index.append(batch["index"].numpy())
    labels = prepared.task_labels("valid")[np.concatenate(index)]
    return batches, labels


@user_errors
def export_cmd(
    run_dir: Path = typer.Argument(..., help="A classification (cxrlab train), pneumothorax (seg train) or "
                                             "screening (screen train) run directory, or a classifier .pt."),
    fmt: str = typer.Option("onnx", "--format", help="Export format (onnx)."),
    out: Path = typer.Option(None, "--out", help="A .onnx file (one-network runs) or a folder mirroring the "
                                                 "run's layout (default: export/ next to each checkpoint, where "
                                                 "--backend onnx looks)."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset version."),
    tolerance: float = typer.Option(1e-4, "--tolerance", help="Largest accepted max |difference| of "
                                                              "probabilities, PyTorch vs ONNX Runtime."),
    quantize: str = typer.Option(None, "--quantize", help="int8: also write a static INT8 model, kept only "
                                                          "when the validation AUROC holds (classifier runs)."),
    int8_tolerance: float = typer.Option(0.005, "--int8-tolerance", help="Largest accepted change of the "
                                                                         "validation AUROC from fp32 to INT8."),
) -> None:
    """Export a run's networks to ONNX with its metadata; refuse above the parity tolerance."""
    from cxrlab.inference.export import export_run, quantize_classifier, run_kind

    if fmt != "onnx":
        raise ConfigError("--format", f"unknown format {fmt!r}; choose from onnx")
    if quantize not in (None, "int8"):
        raise ConfigError("--quantize", f"unknown quantization {quantize!r}; choose from int8")
    require_extra("onnx", "onnx", "onnxruntime")
    kind = run_kind(run_dir)
    if quantize and kind != "classification":
        raise ConfigError("--quantize", f"INT8 is judged by the validation AUROC of a classifier; {run_dir} is a "
                                        f"{kind} run (export it without --quantize)")
    if quantize and out is not None:
        raise ConfigError("--out", "--quantize writes next to the checkpoint; leave out --out")
    results = export_run(run_dir, out=out, opset=opset, tolerance=tolerance)
    table = Table(title=f"ONNX export of {run_dir} (parity on {', '.join(results[0].images)})")
    for column in ("network", "file", "max |Δp|"):
        table.add_column(column, justify="right" if column == "max |Δp|" else "left")
    for result in results:
        table.add_row(result.name, str(result.path), f"{result.max_diff:.2e}")
    console.print(table)
    console.print(f"max abs difference of probabilities: {max(r.max_diff for r in results):.3g} "
                  f"(tolerance {tolerance:g})")
    if quantize:
        batches, labels = _classifier_validation(run_dir if run_dir.is_dir() else run_dir.parent)
        decision = quantize_classifier(run_dir, batches, labels, tolerance=int8_tolerance)
        speed = decision.seconds_fp32 / decision.seconds_int8 if decision.seconds_int8 else float("nan")
        console.print(f"INT8 accepted: {decision.metric} fp32 {decision.fp32:.4f}, int8 {decision.int8:.4f} "
                      f"(change {decision.change:+.4f}, tolerance {int8_tolerance:g}); {speed:.2f}x fp32's "
                      f"speed on the validation set; wrote {decision.path}")


def register(app: typer.Typer) -> None:
    """Add ``cxrlab export`` to the top-level app."""
    app.command("export")(export_cmd)
