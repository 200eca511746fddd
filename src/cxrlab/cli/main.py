"""The ``cxrlab`` console script: one Typer app, one sub-app per concern."""

from __future__ import annotations

import logging
import warnings

import typer

from cxrlab import __version__
from cxrlab.cli._lazy import Lazy, lazy_group


#: Every sub-command, imported only when it runs (see cxrlab.cli._lazy); one line each.
COMMANDS = {
    "data": Lazy("cxrlab.cli.data", "app", "Datasets: statistics, RLE masks, preprocessing, "
                                           "caches, phantoms."),
    "metrics": Lazy("cxrlab.cli.metrics", "app", "Score predictions from a CSV or mask "
                                                 "folders."),
    "model": Lazy("cxrlab.cli.model", "app", "Model architectures: parameter counts and "
                                             "features."),
    "study": Lazy("cxrlab.cli.study", "app", "Scaling studies (seed 001): run the grid, then "
                                             "tables and figures."),
    "explain": Lazy("cxrlab.cli.explain", "app", "Grad-CAM family maps and their localization "
                                                 "scores."),
    "train": Lazy("cxrlab.cli.train", "register", "Train a classifier from a recipe; writes a "
                                                  "run directory.", kind="register"),
    "evaluate": Lazy("cxrlab.cli.train", "register", "Score a run's best checkpoint.",
                     kind="register"),
    "predict": Lazy("cxrlab.cli.train", "register", "Per-image probabilities and decisions.",
                    kind="register"),
    "compare": Lazy("cxrlab.cli.train", "register", "Per-task delta AUROC of two runs with "
                                                    "paired DeLong p-values.", kind="register"),
    "dam": Lazy("cxrlab.cli.train", "register", "Train BCE and DAM on the same split and "
                                                "compare.", kind="register"),
    "demo": Lazy("cxrlab.cli.train", "register", "Phantoms, a small CPU model, evaluation, a "
                                                 "real DICOM.", kind="register"),
    "export": Lazy("cxrlab.cli.export", "register", "A run's networks to ONNX (parity-checked), "
                                                    "optionally INT8.", kind="register"),
    "serve": Lazy("cxrlab.cli.serve", "register", "The HTTP inference service.",
                  kind="register"),
    "screen": Lazy("cxrlab.cli.screen", "app", "Normal screening: per-disease multi-task "
                                               "ensemble + SVM (seed 003)."),
    "seg": Lazy("cxrlab.cli.seg", "app", "Pneumothorax segmentation: baseline U-Net vs the "
                                         "gated cascade."),
    "mrnet": Lazy("cxrlab.cli.mrnet", "app", "Knee MRI (MRNet): three-plane AlexNet classifiers "
                                             "and their logistic regression (seed 004)."),
    "brats": Lazy("cxrlab.cli.brats", "app", "Brain tumours (BraTS): 3D U-Net segmentation and "
                                             "survival (seed 004)."),
    "dashboard": Lazy("cxrlab.cli.dashboard", "register", "The evaluation dashboard "
                                                          "(Streamlit) over a run root.",
                      kind="register"),
}

app = typer.Typer(
    name="cxrlab",
    cls=lazy_group(COMMANDS),
    help="Deep learning on chest radiographs: data, training, evaluation, explanation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cxrlab {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at DEBUG level."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True),
) -> None:
    """cxrlab command line."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        # Lightning's start-up notices (accelerator, tips) are noise at the terminal.
        for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                     "lightning.pytorch.accelerators.cuda", "alembic", "mlflow"):
            logging.getLogger(name).setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


if __name__ == "__main__":
    app()
