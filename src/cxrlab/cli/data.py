"""``cxrlab data ...``: inspect, convert, cache and synthesize datasets.

Each command's module is imported when it runs (see :mod:`cxrlab.cli._lazy`), so
``cxrlab data stats`` never imports torch.
"""

from __future__ import annotations

import typer

from cxrlab.cli._lazy import Lazy, lazy_group

COMMANDS = {
    "stats": Lazy("cxrlab.cli.data_stats", "register", "Per-class label counts under a label "
                                                       "policy.", kind="register"),
    "rle": Lazy("cxrlab.cli.data_rle", "register", "Kaggle SIIM run-length encoded masks.",
                kind="register"),
    "show": Lazy("cxrlab.cli.data_show", "register", "Write one image as the model sees it.",
                 kind="register"),
    "cache": Lazy("cxrlab.cli.data_cache", "register", "Preprocess once into a resolution "
                                                       "cache; re-runs update; --check.",
                  kind="register"),
    "synth": Lazy("cxrlab.cli.data_synth", "register", "Write a synthetic phantom dataset.",
                  kind="register"),
}

app = typer.Typer(cls=lazy_group(COMMANDS),
                  help="Datasets: statistics, RLE masks, preprocessing, caches, phantoms.",
                  no_args_is_help=True)
