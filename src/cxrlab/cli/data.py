"""``cxrlab data ...``: inspect, convert, cache and synthesize datasets."""

from __future__ import annotations

import typer

from cxrlab.cli import data_cache, data_rle, data_show, data_stats, data_synth

app = typer.Typer(help="Datasets: statistics, RLE masks, preprocessing, caches, phantoms.",
                  no_args_is_help=True)
for _module in (data_stats, data_rle, data_show, data_cache, data_synth):
    _module.register(app)
