"""``cxrlab data show``: write one image as the model sees it (preprocessed 8-bit PNG)."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrlab.cli.errors import user_errors
from cxrlab.data.transforms import PreprocessConfig, preprocess
from cxrlab.io.image import read_image
from cxrlab.io.write import write_png


@user_errors
def show(
    image: Path = typer.Argument(..., help="DICOM, PNG or JPEG radiograph."),
    size: int = typer.Option(320, "--size", help="Output side length in pixels."),
    out: Path = typer.Option(..., "--out", help="Output 8-bit PNG."),
    clahe: bool = typer.Option(False, "--clahe", help="Apply CLAHE after resizing."),
) -> None:
    """Percentile-clip, scale, pad to square and resize IMAGE; air dark, bone bright."""
    cfg = PreprocessConfig(size=size, clahe=clahe)
    xray = read_image(image)
    write_png(out, preprocess(xray.pixels, cfg))
    meta = xray.meta
    typer.echo(f"wrote {out}: {size} x {size} from {meta.format} {meta.shape[0]} x "
               f"{meta.shape[1]} ({meta.photometric})")


def register(app: typer.Typer) -> None:
    """Add the ``show`` command to ``app``."""
    app.command("show")(show)
