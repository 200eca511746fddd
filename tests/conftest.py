"""Shared fixtures: the real files installed packages ship, and temporary folders."""

from __future__ import annotations

from pathlib import Path

import pytest


def _xrv_data_dir() -> Path:
    import torchxrayvision

    return Path(torchxrayvision.__file__).parent / "data"


def _pydicom_data_dir() -> Path:
    import data_store

    return Path(data_store.__file__).parent / "data"


@pytest.fixture(scope="session")
def xrv_data() -> Path:
    """torchxrayvision's ``data/`` folder (CheXpert, SIIM, NIH, VinDr, PadChest label files)."""
    return _xrv_data_dir()


@pytest.fixture(scope="session")
def rg1_dir() -> Path:
    """pydicom-data's folder holding ``RG1_UNCR.dcm`` and ``RG1_J2KR.dcm``."""
    return _pydicom_data_dir()
