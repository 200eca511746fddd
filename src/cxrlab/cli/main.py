"""The ``cxrlab`` console script: one Typer app, one sub-app per concern."""

from __future__ import annotations

import logging
import warnings

import typer

from cxrlab import __version__
from cxrlab.cli import dashboard as dashboard_cli
from cxrlab.cli import data as data_cli
from cxrlab.cli import explain as explain_cli
from cxrlab.cli import metrics as metrics_cli
from cxrlab.cli import metrics_segmentation as metrics_segmentation_cli
from cxrlab.cli import model as model_cli
from cxrlab.cli import mrnet as mrnet_cli
from cxrlab.cli import screen as screen_cli
from cxrlab.cli import seg as seg_cli
from cxrlab.cli import serve as serve_cli
from cxrlab.cli import study as study_cli
from cxrlab.cli import train as train_cli

app = typer.Typer(
    name="cxrlab",
    help="Deep learning on chest radiographs: data, training, evaluation, explanation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(data_cli.app, name="data")
app.add_typer(metrics_cli.app, name="metrics")
app.add_typer(model_cli.app, name="model")
app.add_typer(study_cli.app, name="study")
app.add_typer(explain_cli.app, name="explain")
train_cli.register(app)
serve_cli.register(app)
screen_cli.register(app)
app.add_typer(seg_cli.app, name="seg")
app.add_typer(mrnet_cli.app, name="mrnet")
metrics_segmentation_cli.register_segmentation_metrics(metrics_cli.app)
dashboard_cli.register(app)


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
