"""``cxrlab data rle decode|encode``: Kaggle SIIM run-length encoded masks <-> PNG.

The image readers and writers (OpenCV, Pillow, pydicom behind :mod:`cxrlab.io`) are
imported by the command bodies, so ``cxrlab data rle --help`` starts light.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cxrlab.cli.errors import user_errors
from cxrlab.errors import InputError

rle_app = typer.Typer(help="Kaggle SIIM run-length encoded masks (train-rle.csv format).",
                      no_args_is_help=True)


@rle_app.command("decode")
@user_errors
def decode(
    csv: Path = typer.Option(..., "--csv", help="RLE CSV as Kaggle ships it (ImageId, "
                                                "EncodedPixels), plain or gzip."),
    image_id: str = typer.Option(..., "--image-id", help="ImageId whose masks to decode."),
    out: Path = typer.Option(..., "--out", help="Output PNG (8-bit, 0 or 255)."),
    width: int = typer.Option(1024, "--width", min=1, help="Image width (columns)."),
    height: int = typer.Option(1024, "--height", min=1, help="Image height (rows)."),
) -> None:
    """Write the union of an image's RLE masks as a PNG in image orientation."""
    from cxrlab.io.rle import masks_union, read_rle_csv
    from cxrlab.io.write import write_png

    rles = read_rle_csv(csv).get(image_id.strip())
    if rles is None:
        raise InputError(csv, f"image id {image_id!r} not found in the RLE CSV")
    mask = masks_union(rles, width, height, source=f"{csv} (ImageId {image_id})")
    write_png(out, mask)
    typer.echo(f"wrote {out}: {height} x {width}, {len(rles)} RLE row(s), "
               f"{int(mask.sum())} mask pixels")


@rle_app.command("encode")
@user_errors
def encode(
    mask: Path = typer.Argument(..., help="Mask image (PNG); nonzero pixels are inside."),
) -> None:
    """Print a mask image's Kaggle SIIM RLE ('-1' when empty)."""
    from cxrlab.io.image import read_mask
    from cxrlab.io.rle import rle_encode

    typer.echo(rle_encode(read_mask(mask)))


def register(app: typer.Typer) -> None:
    """Add the ``rle`` sub-command group (``decode``, ``encode``) to ``app``."""
    app.add_typer(rle_app, name="rle")
