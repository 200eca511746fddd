"""How ``cxrlab data ...`` commands name a dataset on the command line.

Every command that reads a dataset takes the same options::

    --dataset NAME        adapter name (chexpert, mimic, nih, siim, folder, vindr, generic)
    --csv FILE            the adapter's main CSV (see CSV_ARGUMENT)
    --root DIR            folder the CSV's image paths are relative to (folder: the image tree)
    --option KEY=VALUE    any other constructor argument, repeatable
                          (e.g. --option metadata_csv=meta.csv --option label_cols=A,B)

``--option`` values stay strings except ``true``/``false`` (booleans) and the list
arguments in ``LIST_ARGUMENTS`` (comma-separated). Commands declare the options with
the ``*_OPTION`` helpers below and call :func:`open_dataset_from_cli`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from cxrlab.errors import ConfigError

#: Constructor argument that ``--csv`` fills, per adapter.
CSV_ARGUMENT = {
    "chexpert": "csv",
    "vindr": "csv",
    "generic": "csv",
    "mimic": "chexpert_csv",
    "nih": "data_entry_csv",
    "siim": "rle_csv",
}
#: Constructor arguments given as comma-separated lists.
LIST_ARGUMENTS = ("label_cols",)


def dataset_option() -> Any:
    return typer.Option(..., "--dataset", "-d",
                        help="Adapter: chexpert, mimic, nih, siim, folder, vindr, generic.")


def csv_option() -> Any:
    return typer.Option(None, "--csv", help="The adapter's main CSV (CheXpert train.csv, "
                        "NIH Data_Entry, SIIM RLE CSV, MIMIC chexpert CSV, generic CSV).")


def root_option() -> Any:
    return typer.Option(None, "--root", help="Folder the image paths are relative to.")


def extra_option() -> Any:
    return typer.Option(None, "--option", "-o", metavar="KEY=VALUE",
                        help="Other adapter argument, repeatable (e.g. path_col=file, "
                             "label_cols=A,B, metadata_csv=meta.csv).")


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """``["key=value", ...]`` -> keyword arguments (see the module docstring)."""
    kwargs: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError("--option", f"expected KEY=VALUE, got {pair!r}")
        if key in LIST_ARGUMENTS:
            kwargs[key] = [v.strip() for v in value.split(",") if v.strip()]
        elif value.lower() in ("true", "false"):
            kwargs[key] = value.lower() == "true"
        else:
            kwargs[key] = value
    return kwargs


def open_dataset_from_cli(name: str, csv: Path | None = None, root: Path | None = None,
                          options: list[str] | None = None, **kwargs: Any):
    """Open adapter ``name`` from the shared command-line options.

    Args:
        name: Registry name (``cxrlab.data.datasets.DATASETS``).
        csv: Goes to the adapter's main CSV argument (``CSV_ARGUMENT``).
        root: Goes to ``root``.
        options: ``KEY=VALUE`` strings for any other constructor argument.
        **kwargs: Fixed arguments from the command itself (``on_error``, ``policy``,
            ``check_files``...); ``--option`` cannot override them.

    Returns:
        The :class:`~cxrlab.data.datasets.base.XrayDataset`.

    Raises:
        ConfigError: Unknown adapter, ``--csv`` for an adapter without one, or an
            argument the adapter does not take or needs (from ``load_dataset``).
    """
    from cxrlab.data.datasets import DATASETS, load_dataset

    if name not in DATASETS:
        raise ConfigError("--dataset", f"unknown dataset {name!r}; choose one of "
                                       f"{', '.join(sorted(DATASETS))}")
    arguments = parse_options(options)
    clash = sorted(set(arguments) & set(kwargs))
    if clash:
        raise ConfigError("--option", f"{', '.join(clash)} is set by the command itself")
    arguments.update(kwargs)
    if csv is not None:
        if name not in CSV_ARGUMENT:
            raise ConfigError("--csv", f"dataset {name!r} has no CSV; use --root")
        arguments[CSV_ARGUMENT[name]] = str(csv)
    if root is not None:
        arguments["root"] = str(root)
    return load_dataset(name, **arguments)
