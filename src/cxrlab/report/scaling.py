"""Tables and figures of a scaling study (seed 001 section 4.1), from ``results.csv`` alone.

Reads what the runs wrote (``OUT/results.csv``, ``OUT/study.yaml``); imports nothing
from :mod:`cxrlab.engine`. Writes into the study folder::

    summary_by_resolution.csv   task, resolution, n_runs, mean, std, max   (Fig 4.1)
    model_scaling_delta.csv     task, resolution, family, smaller, larger, mean/max of
                                each, delta_mean, delta_max, is_best     (eqs 4.1-4.6, Fig 4.2)
    efficientnet_scaling.csv    task, resolution, arch, n_runs, mean, std, max,
                                all_models_mean                          (Fig 4.3)
    best_models.csv             the best run per task (all architectures)
    fig_resolution.png, fig_model_scaling.png, fig_efficientnet.png
    report.md                   the tables above in markdown, with the figures

``std`` is the sample standard deviation over runs (ddof 1; empty for one run).
``delta_* = larger - smaller`` per family (ResNet152 - ResNet50, DenseNet161 -
DenseNet121 in seed 001). ``is_best`` flags, per task, the (resolution, family) row that
holds the best run among the paired architectures: the green triangle of Fig 4.2.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cxrlab.config.study import DEFAULT_PAIRS
from cxrlab.errors import CSVFormatError, MissingFileError
from cxrlab.utils import atomic_write, atomic_write_text

REQUIRED = ("task", "resolution", "arch", "seed", "best_auroc")
FAMILY_COLORS = ("tab:blue", "tab:red", "tab:purple", "tab:orange", "tab:brown")


def load_results(path: str | Path) -> pd.DataFrame:
    """``results.csv`` of a study (or the folder holding it), checked for the needed columns.

    Raises:
        MissingFileError: No results file.
        CSVFormatError: A required column is missing or ``best_auroc`` is not numeric.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "results.csv"
    if not path.is_file():
        raise MissingFileError(path, "no results.csv; run `cxrlab study scaling` first")
    frame = pd.read_csv(path)
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise CSVFormatError(path, f"missing column(s) {missing}; found {list(frame.columns)}")
    frame["best_auroc"] = pd.to_numeric(frame["best_auroc"], errors="coerce")
    frame["resolution"] = frame["resolution"].astype(int)
    if "arch_group" not in frame.columns:
        frame["arch_group"] = frame["arch"]
    return frame


def study_pairs(study_dir: str | Path) -> dict[str, tuple[str, str]]:
    """The model-scaling pairs of ``OUT/study.yaml`` (seed 001's when absent)."""
    path = Path(study_dir) / "study.yaml"
    if path.is_file():
        study = (yaml.safe_load(path.read_text()) or {}).get("study", {})
        if study.get("pairs"):
            return {str(k): (str(v[0]), str(v[1])) for k, v in study["pairs"].items()}
    return dict(DEFAULT_PAIRS)


def _stats(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    grouped = frame.dropna(subset=["best_auroc"]).groupby(by, sort=True)["best_auroc"]
    out = grouped.agg(n_runs="count", mean="mean", std="std", max="max").reset_index()
    return out


def summary_by_resolution(results: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and max AUROC per task and resolution over all runs (Fig 4.1)."""
    return _stats(results, ["task", "resolution"])


def model_scaling_delta(results: pd.DataFrame, pairs: Mapping[str, Sequence[str]] | None = None) -> pd.DataFrame:
    """Larger-minus-smaller AUROC per task, resolution and family (eqs 4.1-4.6, Fig 4.2).

    Rows exist where both architectures of a family have runs at that resolution.
    """
    pairs = pairs or DEFAULT_PAIRS
    stats = _stats(results, ["task", "resolution", "arch"]).set_index(["task", "resolution", "arch"])
    rows = []
    for (task, resolution), _ in stats.groupby(level=[0, 1]):
        for family, (smaller, larger) in pairs.items():
            if (task, resolution, smaller) not in stats.index or (task, resolution, larger) not in stats.index:
                continue
            small, large = stats.loc[(task, resolution, smaller)], stats.loc[(task, resolution, larger)]
            rows.append({"task": task, "resolution": resolution, "family": family, "smaller": smaller,
                         "larger": larger, "mean_smaller": small["mean"], "mean_larger": large["mean"],
                         "max_smaller": small["max"], "max_larger": large["max"],
                         "delta_mean": large["mean"] - small["mean"], "delta_max": large["max"] - small["max"]})
    columns = ["task", "resolution", "family", "smaller", "larger", "mean_smaller", "mean_larger",
               "max_smaller", "max_larger", "delta_mean", "delta_max", "is_best", "best_arch"]
    delta = pd.DataFrame(rows, columns=columns)
    delta["is_best"] = False
    delta["best_arch"] = pd.Series([""] * len(delta), dtype=object)
    paired = {arch: family for family, members in pairs.items() for arch in members}
    for task, group in results[results["arch"].isin(paired)].dropna(subset=["best_auroc"]).groupby("task"):
        best = group.loc[group["best_auroc"].idxmax()]
        hit = ((delta["task"] == task) & (delta["resolution"] == best["resolution"])
               & (delta["family"] == paired[best["arch"]]))
        delta.loc[hit, "is_best"] = True
        delta.loc[hit, "best_arch"] = best["arch"]
    return delta


def efficientnet_scaling(results: pd.DataFrame, group: str = "efficientnet") -> pd.DataFrame:
    """Per task and resolution, the paired EfficientNet's AUROC next to all models' mean (Fig 4.3)."""
    eff = results[(results["arch_group"] == group) | results["arch"].astype(str).str.startswith(group)]
    stats = _stats(eff, ["task", "resolution", "arch"])
    overall = summary_by_resolution(results)[["task", "resolution", "mean"]].rename(
        columns={"mean": "all_models_mean"})
    return stats.merge(overall, on=["task", "resolution"], how="left")


def best_models(results: pd.DataFrame) -> pd.DataFrame:
    """The run with the highest AUROC per task."""
    clean = results.dropna(subset=["best_auroc"])
    best = clean.loc[clean.groupby("task")["best_auroc"].idxmax()]
    keep = [c for c in ("task", "arch", "resolution", "seed", "best_auroc", "best_epoch", "key") if c in best]
    return best[keep].reset_index(drop=True)


# ---------------------------------------------------------------------------- figures


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))


def _grid(n: int, title: str) -> tuple[Figure, list[Any]]:
    cols = min(n, 5)
    rows = int(np.ceil(n / cols))
    fig = Figure(figsize=(max(3.3 * cols, 4.5), 3.0 * rows + 0.4), layout="constrained")
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    fig.suptitle(title)
    return fig, axes


def _task_panels(frame: pd.DataFrame, title: str, ylabel: str, draw: Callable[[Any, pd.DataFrame], None],
                 path: Path, legend_size: int = 6) -> Path:
    """One panel per task (x: resolution), ``draw(ax, rows_of_the_task)`` fills each; saved to ``path``."""
    tasks = list(dict.fromkeys(frame["task"]))
    fig, axes = _grid(max(len(tasks), 1), title)
    for ax, task in zip(axes, tasks):
        part = frame[frame["task"] == task].sort_values("resolution")
        draw(ax, part)
        ax.set_title(task)
        ax.set_xlabel("resolution (px)")
        ax.set_xticks(sorted(part["resolution"].unique()))
    if axes:
        axes[0].set_ylabel(ylabel)
        if axes[0].get_legend_handles_labels()[0]:
            axes[0].legend(fontsize=legend_size)
    return _save(fig, path)


def _mean_std_max(ax: Any, part: pd.DataFrame, who: str = "") -> None:
    ax.errorbar(part["resolution"], part["mean"], yerr=part["std"].fillna(0), fmt="o-", capsize=3,
                label=f"{who}mean ± std")
    ax.plot(part["resolution"], part["max"], "^", color="tab:green", label=f"{who}max")


def plot_resolution(summary: pd.DataFrame, path: Path) -> Path:
    """Fig 4.1: mean ± std (bars) and max (triangles) AUROC against resolution, per task."""
    return _task_panels(summary, "AUROC by image resolution (all runs)", "validation AUROC", _mean_std_max, path,
                        legend_size=7)


def plot_model_scaling(delta: pd.DataFrame, path: Path) -> Path:
    """Fig 4.2: Δmean (circles) and Δmax (triangles) per family; the best model in green."""
    families = list(dict.fromkeys(delta["family"]))

    def draw(ax: Any, part: pd.DataFrame) -> None:
        for k, family in enumerate(families):
            rows = part[part["family"] == family]
            color = FAMILY_COLORS[k % len(FAMILY_COLORS)]
            ax.plot(rows["resolution"], rows["delta_mean"], "o", color=color, label=f"{family} Δmean")
            ax.plot(rows["resolution"], rows["delta_max"], "^", color=color, mfc="none", label=f"{family} Δmax")
        best = part[part["is_best"]]
        ax.plot(best["resolution"], best["delta_max"], "^", color="tab:green", markersize=11, label="best model")
        ax.axhline(0.0, linestyle="--", color="gray", linewidth=1)

    return _task_panels(delta, "Larger minus smaller model (AUROC)", "Δ AUROC", draw, path)


def plot_efficientnet(eff: pd.DataFrame, path: Path) -> Path:
    """Fig 4.3: the paired EfficientNet's mean ± std and max per resolution, vs all models' mean."""

    def draw(ax: Any, part: pd.DataFrame) -> None:
        _mean_std_max(ax, part, "EfficientNet ")
        ax.plot(part["resolution"], part["all_models_mean"], "s--", color="gray", label="all models mean")
        for _, row in part.iterrows():
            ax.annotate(str(row["arch"]).replace("efficientnet_", ""), (row["resolution"], row["max"]),
                        textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7)

    return _task_panels(eff, "EfficientNet compound scaling", "validation AUROC", draw, path)


# --------------------------------------------------------------------------- the report


def _markdown(frame: pd.DataFrame, digits: int = 4) -> str:
    if frame.empty:
        return "_(no rows)_\n"
    cols = list(frame.columns)

    def cell(value: Any) -> str:
        if isinstance(value, (float, np.floating)):
            return "" if np.isnan(value) else f"{value:.{digits}f}"
        return str(value)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    return atomic_write_text(path, frame.to_csv(index=False))


def write_report(study_dir: str | Path, pairs: Mapping[str, Sequence[str]] | None = None,
                 extra_sections: Sequence[tuple[str, str]] = ()) -> dict[str, Path]:
    """Write every table, figure and ``report.md`` of a study folder; returns the paths.

    Args:
        study_dir: The study folder (holds ``results.csv``).
        pairs: Model-scaling pairs; default: ``study.yaml``'s, else seed 001's.
        extra_sections: ``(title, markdown)`` sections appended to ``report.md``
            (the CLI adds the CAM grid and localization scores).
    """
    out = Path(study_dir)
    results = load_results(out)
    pairs = pairs or study_pairs(out)
    summary = summary_by_resolution(results)
    delta = model_scaling_delta(results, pairs)
    eff = efficientnet_scaling(results)
    best = best_models(results)
    paths = {
        "summary_by_resolution": _write_csv(summary, out / "summary_by_resolution.csv"),
        "model_scaling_delta": _write_csv(delta, out / "model_scaling_delta.csv"),
        "efficientnet_scaling": _write_csv(eff, out / "efficientnet_scaling.csv"),
        "best_models": _write_csv(best, out / "best_models.csv"),
        "fig_resolution": plot_resolution(summary, out / "fig_resolution.png"),
        "fig_model_scaling": plot_model_scaling(delta, out / "fig_model_scaling.png"),
        "fig_efficientnet": plot_efficientnet(eff, out / "fig_efficientnet.png"),
    }
    n_runs = results["key"].nunique() if "key" in results else len(results)
    text = [f"# Scaling study report: {out.name}\n",
            f"{n_runs} runs, tasks {', '.join(map(str, summary['task'].unique()))}; resolutions "
            f"{', '.join(map(str, sorted(results['resolution'].unique())))}; architectures "
            f"{', '.join(map(str, results['arch'].unique()))}. AUROC = validation AUROC of each run's "
            "best checkpoint (study level).\n",
            "## Best model per task\n", _markdown(best),
            "## AUROC by resolution (Fig 4.1)\n", _markdown(summary), "![](fig_resolution.png)\n",
            "## Model scaling: larger minus smaller (eqs 4.1-4.6, Fig 4.2)\n",
            _markdown(delta.drop(columns=["best_arch"])), "![](fig_model_scaling.png)\n",
            "## EfficientNet compound scaling (Fig 4.3)\n",
            _markdown(eff) if not eff.empty else "_(no EfficientNet runs in this study)_\n",
            "![](fig_efficientnet.png)\n"]
    for title, body in extra_sections:
        text += [f"## {title}\n", body]
    paths["report"] = atomic_write_text(out / "report.md", "\n".join(text))
    return paths


def markdown_table(frame: pd.DataFrame, digits: int = 4) -> str:
    """A DataFrame as a GitHub markdown table (used by the CLI for extra sections)."""
    return _markdown(frame, digits)
