"""``cxrlab explain``: class activation maps of a checkpoint, and their scores against boxes.

Two forms::

    cxrlab explain CHECKPOINT IMAGE... --out DIR [--method gradcam] [--target CLASS]
    cxrlab explain localize CHECKPOINT --boxes BBox_List_2017.csv --images DIR --out DIR

The first is the group's default command (``images``): a first argument that is not a
subcommand name is taken as its CHECKPOINT.
"""

from __future__ import annotations

from pathlib import Path

import click
import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from cxrlab.cli.errors import user_errors

console = Console()
DEFAULT_COMMAND = "images"


class DefaultCommandGroup(TyperGroup):
    """A Typer group that runs :data:`DEFAULT_COMMAND` when no subcommand is named."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    name="explain",
    cls=DefaultCommandGroup,
    no_args_is_help=True,
    help="Grad-CAM family maps: `cxrlab explain CHECKPOINT IMAGE... --out DIR` writes overlays and "
         "raw maps; `cxrlab explain localize ...` scores maps against radiologists' boxes.",
)


@app.command(DEFAULT_COMMAND)
@user_errors
def images_cmd(
    checkpoint: Path = typer.Argument(..., help="A .pt checkpoint or a run directory."),
    images: list[Path] = typer.Argument(..., help="Image files or folders (DICOM, PNG, JPEG)."),
    out: Path = typer.Option(..., "--out", help="Output folder."),
    method: str = typer.Option("gradcam", "--method", help="gradcam, gradcam++, xgradcam, hirescam, layercam, "
                                                           "eigencam, eigengradcam, scorecam."),
    target: list[str] = typer.Option(None, "--target", help="Class to explain (repeatable; default: all)."),
    alpha: float = typer.Option(0.45, "--alpha", help="Weight of the map in the overlay."),
    skip_errors: bool = typer.Option(False, "--skip-errors", help="Skip unreadable images."),
) -> None:
    """(default) Write CAM overlays (PNG) and maps (.npy) for every image and class."""
    from cxrlab.errors import SkipLog
    from cxrlab.explain.cam import explain_files
    from cxrlab.inference.classifier import iter_image_paths

    skips = SkipLog("skip" if skip_errors else "raise")
    table = explain_files(checkpoint, iter_image_paths(images), out, method=method, targets=target or None,
                          alpha=alpha, skips=skips)
    view = Table(title=f"{method} maps (bilinear upsampling of the last feature map)")
    for column in ("image", "class", "probability", "feature map", "overlay"):
        view.add_column(column)
    for row in table.itertuples(index=False):
        view.add_row(Path(row.image).name, row.label, f"{row.probability:.3f}", f"{row.feature_h}x{row.feature_w}",
                     row.overlay)
    console.print(view)
    if skips.count:
        console.print(skips.summary())
    console.print(f"wrote {len(table)} overlay(s) and maps to [bold]{out}[/] (explanations.csv)")


def _with_ci(row, mean: str, name: str) -> str:
    """``mean (low-high)`` of one summary row."""
    return f"{getattr(row, mean):.3f} ({getattr(row, f'{name}_ci_low'):.3f}-{getattr(row, f'{name}_ci_high'):.3f})"


@app.command("localize")
@user_errors
def localize_cmd(
    checkpoint: Path = typer.Argument(..., help="A .pt checkpoint or a run directory."),
    boxes: Path = typer.Option(..., "--boxes", help="BBox_List_2017.csv(.gz), or a CSV image,label,x,y,w,h."),
    images: Path = typer.Option(..., "--images", help="Folder holding the boxed images (searched recursively)."),
    out: Path = typer.Option(..., "--out", help="Output folder."),
    method: str = typer.Option("gradcam", "--method", help="CAM method."),
    threshold: float = typer.Option(0.5, "--threshold", help="Map level of the IoU region (maps are 0-1)."),
    tolerance: int = typer.Option(0, "--tolerance", help="Pointing-game tolerance in input pixels."),
    classes: list[str] = typer.Option(None, "--class", help="Only these classes (NIH or model names)."),
    overlays: bool = typer.Option(True, "--overlays/--no-overlays", help="Write overlay PNGs with boxes."),
) -> None:
    """Pointing game, thresholded-map IoU and energy in box, per class with 95% CIs."""
    from cxrlab.explain.localize import localize

    result = localize(checkpoint, boxes, images, out, method=method, threshold=threshold, tolerance=tolerance,
                      classes=classes or None, overlays=overlays)
    view = Table(title=f"{method} vs boxes: per class (95% CI)")
    for column in ("class", "n", "pointing hit rate", "IoU", "energy in box", "box share", "mean p"):
        view.add_column(column, justify="left" if column == "class" else "right")
    for row in result.summary.itertuples(index=False):
        view.add_row(row[0], str(row.n), _with_ci(row, "pointing_hit_rate", "pointing"),
                     _with_ci(row, "iou_mean", "iou"), _with_ci(row, "energy_in_box_mean", "energy_in_box"),
                     f"{row.box_fraction_mean:.3f}", f"{row.probability_mean:.3f}")
    console.print(view)
    if result.skipped.count:
        console.print(result.skipped.summary())
    console.print(f"wrote [bold]{out}[/] (localization_summary.csv, localization_per_image.csv)")
