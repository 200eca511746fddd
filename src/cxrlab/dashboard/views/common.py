"""Helpers shared by the dashboard pages: the run root, the cached index, cached readers, charts."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from cxrlab.dashboard import data
from cxrlab.dashboard.index import RunIndex, RunRecord, open_index

ENV_RUNS = "CXRLAB_DASHBOARD_RUNS"
REFRESH_SECONDS = 3.0
"""A page load re-walks the run root at most this often (the Rescan button forces it)."""

PAGES: dict[str, dict[str, Any]] = {
    "runs": {"title": "Runs", "file": "runs.py", "kinds": None},
    "compare": {"title": "Compare", "file": "compare.py", "kinds": ("classification", "mrnet")},
    "scaling": {"title": "Scaling study", "file": "scaling.py", "kinds": ("study",)},
    "explain": {"title": "Explain", "file": "explain.py", "kinds": ("explanation", "localization")},
    "segmentation": {"title": "Segmentation", "file": "segmentation.py",
                     "kinds": ("segmentation", "segmentation_cv", "seg_predictions")},
    "screening": {"title": "Screening", "file": "screening.py", "kinds": ("screening",)},
    "mrnet": {"title": "Knee MRI (MRNet)", "file": "mrnet.py", "kinds": ("mrnet",)},
    "brats": {"title": "BraTS", "file": "brats.py", "kinds": ("brats",)},
    "image": {"title": "Image", "file": "image.py", "kinds": None},
}


def runs_root() -> Path:
    """The run root: ``--runs`` after ``--`` on the ``streamlit run`` line, else
    ``$CXRLAB_DASHBOARD_RUNS``, else ``runs``."""
    if "cxrlab_runs_root" not in st.session_state:
        parser = argparse.ArgumentParser(add_help=False)
        parser.add_argument("--runs", default=None)
        known, _ = parser.parse_known_args(sys.argv[1:])
        st.session_state["cxrlab_runs_root"] = str(Path(known.runs or os.environ.get(ENV_RUNS) or "runs").resolve())
    return Path(st.session_state["cxrlab_runs_root"])


def run_index() -> RunIndex:
    """The shared index of the run root, refreshed when older than :data:`REFRESH_SECONDS`."""
    index = open_index(runs_root())
    index.refresh(max_age=REFRESH_SECONDS)
    return index


def available_pages(index: RunIndex) -> list[str]:
    """Keys of the pages that have something to show for the runs in ``index``."""
    kinds = {r.kind for r in index.records if r.readable}
    shown = []
    for key, page in PAGES.items():
        wanted = page["kinds"]
        if key == "explain":
            has_grid = any(r.info.get("has_cam_grid") for r in index.of_kind("study"))
            if not (kinds & set(wanted) or has_grid):
                continue
        elif wanted is not None and not kinds & set(wanted):
            continue
        shown.append(key)
    return shown


def pick_record(records: Sequence[RunRecord], label: str, key: str, help: str | None = None) -> RunRecord | None:
    """A selectbox over readable records (by name); None (with a note) when there is none."""
    usable = [r for r in records if r.readable]
    if not usable:
        st.info(f"No {label.lower()} under this run root.")
        return None
    names = [r.name for r in usable]
    chosen = st.selectbox(label, names, key=key, help=help)
    return usable[names.index(chosen)]


def show_error(err: Exception, what: str) -> None:
    """A page never crashes on a bad run directory: say what could not be read."""
    st.warning(f"{what}: {type(err).__name__}: {err}")


READ_ERRORS = (OSError, ValueError, KeyError, TypeError, IndexError, pd.errors.ParserError, pd.errors.EmptyDataError)


def read_or_warn(record: RunRecord, reader: Callable[[Path], Any], what: str = "read") -> Any:
    """``reader(record.path)``, or None after a warning ("Cannot <what> <run>: ...") when it fails."""
    try:
        return reader(record.path)
    except READ_ERRORS as err:
        show_error(err, f"Cannot {what} {record.name}")
        return None


# ---------------------------------------------------------------------------- cached reads


@st.cache_data(max_entries=256, show_spinner=False)
def read_image_cached(path: str, mtime: float) -> tuple[Any, Any]:
    """``read_image(path)``'s pixels and meta, cached per file version."""
    from cxrlab.io import read_image

    image = read_image(path)
    return image.pixels, image.meta


def file_mtime(path: str | Path) -> float:
    """Modification time of ``path`` (0 when missing), used as a cache key."""
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


# ---------------------------------------------------------------------------------- charts


def fmt_p(value: Any) -> str:
    """A p-value for a table: ``<0.001``, three decimals, or empty."""
    if value is None or pd.isna(value):
        return ""
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def plotly_config() -> dict[str, Any]:
    """Plotly options for every chart (no logo, PNG export at twice the size)."""
    return {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}


def chart(fig: Any, key: str | None = None) -> None:
    """Draw a Plotly figure with the dashboard's defaults."""
    fig.update_layout(margin={"l": 40, "r": 20, "t": 50, "b": 40})
    st.plotly_chart(fig, config=plotly_config(), key=key)


def readable_frame(frame: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Round float columns for display."""
    out = frame.copy()
    for column in out.columns:
        if pd.api.types.is_float_dtype(out[column]):
            out[column] = out[column].round(digits)
    return out


__all__ = ["PAGES", "READ_ERRORS", "available_pages", "chart", "data", "file_mtime", "fmt_p", "pick_record",
           "read_image_cached", "readable_frame", "run_index", "runs_root", "show_error"]
