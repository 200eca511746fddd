"""Screening page: confusion matrices per evaluation set, risk-group and unseen-disease tables,
and sensitivity/specificity at the stored operating point (seed 003)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cxrlab.dashboard.views.common import (READ_ERRORS, chart, data, pick_record, read_or_warn, readable_frame,
                                           run_index, show_error)

st.title("Normal screening")
index = run_index()
record = pick_record([r for r in index.of_kind("screening") if r.state != "incomplete"], "Screening run",
                     key="screen_run")
if record is None:
    st.stop()
tables = read_or_warn(record, data.screening_tables)
if tables is None:
    st.stop()
report = tables["report"]
variants = list((report.get("variants") or {}).keys())
primary = report.get("primary_variant") or (variants[0] if variants else None)
variant = st.radio("Variant", variants, index=variants.index(primary) if primary in variants else 0,
                   horizontal=True, key="screen_variant") if variants else None
summary = (report.get("variants") or {}).get(variant, {})
point = summary.get("operating_point") or {}


def pct(value):
    return "n/a" if value is None else f"{100 * value:.1f}%"


cols = st.columns(4)
cols[0].metric("Sensitivity (internal)", pct(summary.get("sensitivity")))
cols[1].metric("Specificity (internal)", pct(summary.get("specificity")))
cols[2].metric("Unseen diseases called normal", pct(summary.get("unseen_predicted_normal_rate")),
               help=f"n = {summary.get('n_unseen')}")
cols[3].metric("Operating point", f"{point.get('threshold', float('nan')):.3f}",
               help=f"SVM score threshold chosen on validation for sensitivity {point.get('target_sensitivity')} "
                    f"(validation: sensitivity {point.get('sensitivity')}, specificity {point.get('specificity')})")

points = tables["operating_points"]
if not points.empty:
    st.subheader("Sensitivity and specificity at the stored operating point")
    st.dataframe(readable_frame(points[points["variant"] == variant]), hide_index=True, width="stretch")

confusion = tables["table2_confusion"]
if not confusion.empty:
    st.subheader("Normal / abnormal per evaluation set (Table 2)")
    part = confusion[confusion["variant"] == variant]
    cols = st.columns(max(len(part), 1))
    for col, (_, row) in zip(cols, part.iterrows()):
        matrix = data.confusion_matrix(row)
        fig = go.Figure(go.Heatmap(z=matrix.to_numpy(), x=list(matrix.columns), y=list(matrix.index),
                                   text=matrix.to_numpy(), texttemplate="%{text}", colorscale="Blues",
                                   showscale=False))
        fig.update_layout(title=f"{row['set']} (n={int(row['n'])})", height=300, yaxis={"autorange": "reversed"})
        with col:
            chart(fig, key=f"confusion_{row['set']}")
            st.caption(f"sensitivity {row['sensitivity']:.3f} · specificity {row['specificity']:.3f}")

risk = tables["table3_risk_groups"]
if not risk.empty:
    st.subheader("AI normal / target / others per risk group (Tables 3, 8)")
    st.dataframe(risk[risk["variant"] == variant], hide_index=True, width="stretch")

unseen = tables["table9_unseen"]
if not unseen.empty:
    st.subheader("Predictions on diseases never seen in training (Table 9)")
    part = unseen[unseen["variant"] == variant]
    st.dataframe(readable_frame(part), hide_index=True, width="stretch")
    shares = [c for c in part.columns if "/" in c]
    if shares and not part.empty:
        fig = go.Figure()
        for column in shares:
            fig.add_trace(go.Bar(x=part["unseen_disease"], y=part[column], name=column))
        fig.update_layout(barmode="group", title="Share of each class per per-disease model", yaxis_range=[0, 1],
                          height=360)
        chart(fig, key="unseen_chart")

for key, title in (("ablations", "Ablations (Tables 5-7)"), ("cost", "Inference cost")):
    if not tables[key].empty:
        with st.expander(title):
            st.dataframe(readable_frame(tables[key]), hide_index=True, width="stretch")

predictions = record.path / "predictions"
files = sorted(predictions.glob(f"{variant}_*.csv")) if variant else []
if files:
    st.subheader("SVM scores and the operating point")
    fig = go.Figure()
    for path in files:
        try:
            frame = pd.read_csv(path)
        except READ_ERRORS as err:
            show_error(err, f"Cannot read {path.name}")
            continue
        for truth, name in ((0, "normal"), (1, "abnormal")):
            scores = frame.loc[frame["abnormal_truth"] == truth, "svm_score"]
            fig.add_trace(go.Histogram(x=scores, name=f"{path.stem.split('_', 1)[1]}: {name}", opacity=0.6))
    if "threshold" in point:
        fig.add_vline(x=point["threshold"], line_dash="dash", annotation_text="operating point")
    fig.update_layout(barmode="overlay", xaxis_title="SVM score", height=340)
    chart(fig, key="score_hist")
