"""Scaling study page: seed 001's Fig 4.1 (AUROC by resolution), 4.2 (larger minus smaller
model) and 4.3 (EfficientNet compound scaling), interactive and per task."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from cxrlab.dashboard.views.common import chart, data, pick_record, read_or_warn, readable_frame, run_index

COLORS = ("#1f77b4", "#d62728", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")

st.title("Scaling study")
index = run_index()
record = pick_record(index.of_kind("study"), "Study", key="scaling_study")
if record is None:
    st.stop()
progress = record.info.get("progress")
if progress:
    st.caption(" · ".join(f"{k} {v}" for k, v in progress.items() if v is not None))
tables = read_or_warn(record, data.scaling_tables, "read the study")
if tables is None:
    st.stop()
for problem in tables["problems"]["problem"]:
    st.warning(problem)
results = tables["results"]
tasks = sorted(results["task"].astype(str).unique().tolist())
task = st.selectbox("Task", tasks, key="scaling_task")
runs = results[results["task"].astype(str) == task]


def of_task(frame):
    """The rows of the chosen task, by resolution."""
    return frame[frame["task"].astype(str) == task].sort_values("resolution") if not frame.empty else frame


def mean_and_max(fig, frame, who: str = "", mean_style: dict | None = None, max_style: dict | None = None) -> None:
    """Mean ± std (line) and max (green triangles) by resolution."""
    fig.add_trace(go.Scatter(x=frame["resolution"], y=frame["mean"], mode="lines+markers", name=f"{who}mean ± std",
                             error_y={"type": "data", "array": frame["std"].fillna(0), "visible": True},
                             **(mean_style or {})))
    fig.add_trace(go.Scatter(x=frame["resolution"], y=frame["max"], name=f"{who}max",
                             marker={"symbol": "triangle-up", "size": 12, "color": "green"},
                             **{"mode": "markers", **(max_style or {})}))

st.subheader("Fig 4.1 — AUROC by image resolution")
summary = of_task(tables["summary"])
fig = go.Figure()
for k, (arch, part) in enumerate(runs.groupby("arch", sort=True)):
    fig.add_trace(go.Scatter(x=part["resolution"], y=part["best_auroc"], mode="markers", name=str(arch),
                             marker={"size": 7, "opacity": 0.55, "color": COLORS[k % len(COLORS)]},
                             customdata=part[["seed"]].to_numpy(),
                             hovertemplate=f"{arch}<br>%{{x}} px, seed %{{customdata[0]}}<br>AUROC %{{y:.3f}}"
                                           "<extra></extra>"))
mean_and_max(fig, summary, mean_style={"line": {"color": "black"}})
fig.update_layout(title=f"{task}: validation AUROC of every run by resolution", xaxis_title="resolution (px)",
                  yaxis_title="AUROC", height=430, xaxis={"tickvals": sorted(summary["resolution"].unique())})
chart(fig, key="fig41")

st.subheader("Fig 4.2 — larger minus smaller model")
delta = of_task(tables["delta"])
if delta.empty:
    st.info("No model family has both of its architectures at one resolution in this study.")
else:
    fig = go.Figure()
    for k, (family, part) in enumerate(delta.groupby("family", sort=True)):
        color = COLORS[k % len(COLORS)]
        label = f"{family} ({part['larger'].iloc[0]} − {part['smaller'].iloc[0]})"
        fig.add_trace(go.Scatter(x=part["resolution"], y=part["delta_mean"], mode="markers", name=f"{label} Δmean",
                                 marker={"size": 10, "color": color}))
        fig.add_trace(go.Scatter(x=part["resolution"], y=part["delta_max"], mode="markers", name=f"{label} Δmax",
                                 marker={"size": 11, "symbol": "triangle-up-open", "color": color}))
    best = delta[delta["is_best"]]
    if not best.empty:
        fig.add_trace(go.Scatter(x=best["resolution"], y=best["delta_max"], mode="markers", name="best model",
                                 marker={"size": 16, "symbol": "triangle-up", "color": "green"}))
    fig.add_hline(y=0.0, line_dash="dash", line_color="grey")
    fig.update_layout(title=f"{task}: Δ AUROC per family", xaxis_title="resolution (px)", yaxis_title="Δ AUROC",
                      height=430, xaxis={"tickvals": sorted(delta["resolution"].unique())})
    chart(fig, key="fig42")

st.subheader("Fig 4.3 — EfficientNet compound scaling")
eff = of_task(tables["efficientnet"])
if eff.empty:
    st.info("No EfficientNet runs in this study.")
else:
    fig = go.Figure()
    mean_and_max(fig, eff, "EfficientNet ",
                 mean_style={"text": eff["arch"], "hovertemplate": "%{text}<br>%{x} px: %{y:.3f}<extra></extra>"},
                 max_style={"mode": "markers+text", "textposition": "top center",
                            "text": eff["arch"].astype(str).str.replace("efficientnet_", "")})
    fig.add_trace(go.Scatter(x=eff["resolution"], y=eff["all_models_mean"], mode="lines+markers",
                             name="all models mean", line={"dash": "dash", "color": "grey"}))
    fig.update_layout(title=f"{task}: the paired EfficientNet per resolution", xaxis_title="resolution (px)",
                      yaxis_title="AUROC", height=430)
    chart(fig, key="fig43")

with st.expander("Tables", expanded=False):
    st.markdown("**Best run per task**")
    st.dataframe(readable_frame(tables["best"]), hide_index=True, width="stretch")
    st.markdown("**Summary by resolution**")
    st.dataframe(readable_frame(summary), hide_index=True, width="stretch")
    st.markdown("**Model scaling deltas**")
    st.dataframe(readable_frame(delta), hide_index=True, width="stretch")
    st.markdown("**Every run of this task**")
    keep = [c for c in ("key", "arch", "resolution", "seed", "best_auroc", "best_auroc_ci_low", "best_auroc_ci_high",
                        "best_epoch", "micro_batch", "accumulation", "images_per_second", "run_dir") if c in runs]
    st.dataframe(readable_frame(runs[keep]), hide_index=True, width="stretch")
