"""``cxrlab model ...``: inspect model architectures."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from cxrlab.cli.errors import user_errors

app = typer.Typer(help="Model architectures: parameter counts and features.", no_args_is_help=True)


@app.command("info")
@user_errors
def info(
    name: str = typer.Argument(..., help="Registry name (resnet50, efficientnet_b3, ...) or any timm model."),
    num_classes: int = typer.Option(1, "--num-classes", help="Logits of the head (seed 001: 1 per task)."),
    in_chans: int = typer.Option(3, "--in-chans", help="Input channels (1 for gray radiographs)."),
    head: str = typer.Option("concat", "--head", help="concat (seed 001's fastai head) or linear."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Trainable parameters of the body and head, and the body's output features."""
    from cxrlab.models import count_parameters, get_architecture, resolve_timm_name

    counts = count_parameters(name, num_classes=num_classes, in_chans=in_chans, head=head)
    result = {
        "arch": name,
        "timm_name": resolve_timm_name(name),
        "num_classes": num_classes,
        "in_chans": in_chans,
        "head": head,
        **counts,
        "total_params": counts["body_params"] + counts["head_params"],
    }
    if as_json:
        typer.echo(json.dumps(result))
        return
    table = Table(title=f"{name} ({result['timm_name']})", show_header=False)
    table.add_column("field")
    table.add_column("value", justify="right")
    table.add_row("body parameters (trainable)", f"{counts['body_params']:,}")
    table.add_row("body output features", f"{counts['num_features']:,}")
    table.add_row(f"head parameters ({head}, {num_classes} class(es))", f"{counts['head_params']:,}")
    table.add_row("total parameters", f"{result['total_params']:,}")
    table.add_row("input channels", str(in_chans))
    spec = get_architecture(name)
    if spec is not None:
        table.add_row("ImageNet pretraining resolution", f"{spec.pretrain_resolution} px")
        if spec.experiment_resolutions:
            table.add_row("seed 001 experiment resolutions", ", ".join(map(str, spec.experiment_resolutions)))
        table.add_row("source", spec.source)
    Console().print(table)
