"""Compare page: ROC and PR curves overlaid per task, AUROC with DeLong CIs and paired p-values."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from cxrlab.dashboard.views.common import READ_ERRORS, chart, data, fmt_p, run_index, show_error

MAX_DEFAULT = 4

st.title("Compare runs")
index = run_index()
candidates = [r for r in index.of_kind(*data.AUROC_KINDS) if r.readable and r.aurocs]
names = [r.name for r in candidates]
if not names:
    st.info("No finished classification or MRNet run under this run root.")
    st.stop()
stored = [n for n in st.session_state.get("selected_runs", []) if n in names]
if not stored:
    latest = sorted(candidates, key=lambda r: r.date or 0, reverse=True)[:MAX_DEFAULT]
    stored = [r.name for r in latest]
if "compare_select" not in st.session_state:
    st.session_state["compare_select"] = stored
st.session_state["compare_select"] = [n for n in st.session_state["compare_select"] if n in names]
chosen = st.multiselect("Runs", names, key="compare_select")
st.session_state["selected_runs"] = chosen
if not chosen:
    st.info("Choose runs here or on the Runs page.")
    st.stop()
by_name = {r.name: r for r in candidates}
runs = [by_name[n] for n in chosen]
cols = st.columns(3)
split = cols[0].radio("Split", ["test", "valid"], horizontal=True, key="compare_split",
                      index=0 if any("test" in r.aurocs for r in runs) else 1)    # MRNet: valid is held out
runs = [r for r in runs if split in r.aurocs]
if not runs:
    st.info(f"None of the chosen runs has {split} scores.")
    st.stop()
reference = cols[1].selectbox("Reference run (paired DeLong test)", [r.name for r in runs], key="compare_ref")
ref_tasks = list(by_name[reference].aurocs.get(split, {}))
tasks = cols[2].multiselect("Tasks", ref_tasks, default=ref_tasks, key="compare_tasks")

st.subheader("AUROC with DeLong 95% CI; paired DeLong test against the reference")
try:
    table = data.compare_aurocs(runs, split, reference, tasks)
except READ_ERRORS as err:
    show_error(err, "Cannot compare these runs")
    table = None
if table is not None:
    view = table.assign(p_value=table["p_value"].map(fmt_p), delta=table["delta"].round(4),
                        z=table["z"].round(3), auroc=table["auroc"].round(4))
    st.dataframe(view[["task", "run", "auroc_ci", "delta", "z", "p_value", "n_paired", "note"]], hide_index=True,
                 width="stretch", column_config={"auroc_ci": "AUROC (95% CI)", "delta": "Δ AUROC vs ref",
                                                 "p_value": "p (paired DeLong)"})
    st.caption("Δ and p are computed on the studies both runs scored with the same known label (n_paired).")

curves = {}
for record in runs:
    try:
        curves[record.name] = data.load_curves(record, split)
    except READ_ERRORS as err:
        show_error(err, f"No curves for {record.name}")

for task in tasks:
    st.subheader(task)
    left, right = st.columns(2)
    roc, pr = go.Figure(), go.Figure()
    roc.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dash", "color": "grey"},
                             name="chance", showlegend=False))
    for name, per_task in curves.items():
        entry = per_task.get(task) or {}
        if entry.get("roc"):
            roc.add_trace(go.Scatter(x=entry["roc"]["fpr"], y=entry["roc"]["tpr"], mode="lines",
                                     name=f"{name} ({entry.get('auroc') or float('nan'):.3f})"))
        if entry.get("pr"):
            pr.add_trace(go.Scatter(x=entry["pr"]["recall"], y=entry["pr"]["precision"], mode="lines",
                                    line={"shape": "hv"},
                                    name=f"{name} (AP {entry.get('average_precision') or float('nan'):.3f})"))
    roc.update_layout(title=f"ROC — {task}", xaxis_title="1 - specificity", yaxis_title="sensitivity",
                      xaxis_range=[0, 1], yaxis_range=[0, 1.02], height=420, legend={"orientation": "h", "y": -0.25})
    pr.update_layout(title=f"Precision-recall — {task}", xaxis_title="recall", yaxis_title="precision",
                     xaxis_range=[0, 1], yaxis_range=[0, 1.02], height=420, legend={"orientation": "h", "y": -0.25})
    with left:
        chart(roc, key=f"roc_{task}")
    with right:
        chart(pr, key=f"pr_{task}")
