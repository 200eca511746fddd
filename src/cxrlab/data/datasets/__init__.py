"""Dataset adapters, one per source, behind one contract (:class:`XrayDataset`).

Example:
    >>> from cxrlab.data.datasets import load_dataset
    >>> ds = load_dataset("chexpert", csv="train.csv", check_files=False)  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
from typing import Any

from cxrlab.data.datasets.base import XrayDataset
from cxrlab.data.datasets.chexpert import ChexpertDataset
from cxrlab.data.datasets.folder import FolderDataset
from cxrlab.data.datasets.generic import GenericDataset
from cxrlab.data.datasets.mimic import MimicDataset
from cxrlab.data.datasets.nih import NihDataset
from cxrlab.data.datasets.siim import SiimDataset
from cxrlab.data.datasets.vindr import VindrDataset
from cxrlab.errors import ConfigError

DATASETS: dict[str, type[XrayDataset]] = {
    cls.name: cls
    for cls in (ChexpertDataset, MimicDataset, NihDataset, SiimDataset, FolderDataset,
                VindrDataset, GenericDataset)
}


def path_options(name: str | None = None) -> tuple[str, ...]:
    """The path-valued options of dataset ``name`` (of every registered dataset when None)."""
    if name is not None:
        return DATASETS[name].path_options() if name in DATASETS else ()
    return tuple(dict.fromkeys(key for cls in DATASETS.values() for key in cls.path_options()))


def load_dataset(name: str, **kwargs: Any) -> XrayDataset:
    """Build the adapter registered as ``name`` with its constructor's keyword arguments.

    Raises:
        ConfigError: ``name`` is not in :data:`DATASETS`, or an argument is unknown or
            missing.
    """
    try:
        cls = DATASETS[name]
    except KeyError:
        raise ConfigError(None, f"unknown dataset {name!r}; known: {', '.join(DATASETS)}"
                          ) from None
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as err:
        raise ConfigError(None, f"dataset {name!r}: {err}") from err
    return cls(**kwargs)


__all__ = ["DATASETS", "path_options", "XrayDataset", "load_dataset", "ChexpertDataset", "MimicDataset",
           "NihDataset", "SiimDataset", "FolderDataset", "VindrDataset", "GenericDataset"]
