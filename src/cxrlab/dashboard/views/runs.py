"""Runs page: every run directory, a filterable AUROC table, and the runs chosen for Compare."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from cxrlab.dashboard.brats import runs_table as brats_runs_table
from cxrlab.dashboard.views.common import chart, data, readable_frame, run_index

MAX_CHART_RUNS = 40

st.title("Runs")
index = run_index()
records = index.records
split = st.radio("Split", ["test", "valid"], horizontal=True, key="runs_split",
                 help="AUROC of the run's best checkpoint on this split (valid when a run has no test split)")
aurocs = data.auroc_frame(records, split)
runs = data.runs_frame(records, split)


def options(frame, column):
    return sorted(v for v in frame[column].dropna().unique().tolist())


cols = st.columns(4)
task = cols[0].multiselect("Task", options(aurocs, "task"), key="f_task")
arch = cols[1].multiselect("Architecture", options(aurocs, "arch"), key="f_arch")
resolution = cols[2].multiselect("Resolution", options(aurocs, "resolution"), key="f_res")
loss = cols[3].multiselect("Loss", options(aurocs, "loss"), key="f_loss")
cols = st.columns(4)
seed = cols[0].multiselect("Seed", options(aurocs, "seed"), key="f_seed")
dataset = cols[1].multiselect("Dataset", options(aurocs, "dataset"), key="f_dataset")
study = cols[2].multiselect("Study", options(aurocs, "study"), key="f_study")
text = cols[3].text_input("Name contains", key="f_text")

table = data.filter_frame(aurocs, task=task, arch=arch, resolution=resolution, loss=loss, seed=seed,
                          dataset=dataset, study=study)
if text:
    table = table[table["run"].str.contains(text, case=False, regex=False)]

st.subheader(f"Classification runs — AUROC per task ({split})")
st.caption(f"{table['run'].nunique()} of {aurocs['run'].nunique()} runs; study-level AUROC with DeLong 95% CI")
st.dataframe(
    table[["run", "task", "auroc_ci", "auroc", "arch", "resolution", "loss", "seed", "dataset", "date", "n",
           "n_positive", "split", "study"]],
    hide_index=True, width="stretch",
    column_config={"run": st.column_config.TextColumn("run", pinned=True, width="medium"),
                   "auroc_ci": st.column_config.TextColumn("AUROC (95% CI)"),
                   "auroc": st.column_config.NumberColumn("AUROC", format="%.3f")})

if not table.empty:
    means = table.groupby("run")["auroc"].mean().sort_values(ascending=False)
    shown = means.index[:MAX_CHART_RUNS].tolist()
    fig = go.Figure()
    for name, part in table[table["run"].isin(shown)].groupby("task", sort=True):
        part = part.set_index("run").reindex(shown).dropna(subset=["auroc"])
        fig.add_trace(go.Scatter(
            x=part.index, y=part["auroc"], mode="markers", name=str(name),
            error_y={"type": "data", "symmetric": False, "array": part["ci_high"] - part["auroc"],
                     "arrayminus": part["auroc"] - part["ci_low"]},
            hovertemplate="%{x}<br>AUROC %{y:.3f}<extra>" + str(name) + "</extra>"))
    fig.update_layout(title=f"AUROC with 95% CI — top {len(shown)} runs by mean AUROC", yaxis_title="AUROC",
                      xaxis={"tickangle": -35}, height=420, legend_title="task", scattermode="group")
    chart(fig, key="runs_chart")

names = sorted(table["run"].unique().tolist())
stored = st.session_state.get("selected_runs", [])
st.session_state["runs_select"] = [n for n in st.session_state.get("runs_select", stored) if n in names]
chosen = st.multiselect("Select runs to compare", names, key="runs_select",
                        help="Open the Compare page to overlay their curves and test their AUROCs")
st.session_state["selected_runs"] = chosen
if chosen:
    st.page_link("views/compare.py", label=f"Compare {len(chosen)} selected run(s) →")

st.subheader("All run directories")
kind = st.multiselect("Kind", options(runs, "kind"), key="f_kind")
state = st.multiselect("State", options(runs, "state"), key="f_state")
listing = data.filter_frame(runs, kind=kind, state=state)
if text:
    listing = listing[listing["name"].str.contains(text, case=False, regex=False)]
bad = runs[runs["state"].isin(["unreadable", "incomplete", "failed"])]
if len(bad):
    st.warning(f"{len(bad)} run director{'y is' if len(bad) == 1 else 'ies are'} unreadable, incomplete or "
               "failed; see the state and problem columns.")
st.dataframe(listing, hide_index=True, width="stretch",
             column_config={"mean_auroc": st.column_config.NumberColumn("mean AUROC", format="%.3f")})

brats_records = [r for r in index.of_kind("brats") if r.readable]
if brats_records:
    st.subheader("BraTS runs — mean Dice and HD95 (mm) per region")
    st.dataframe(readable_frame(brats_runs_table(brats_records)), hide_index=True, width="stretch")
    st.page_link("views/brats.py", label="Per-case tables and the slice viewer →")
