"""Explain page: the CAM grid (rows resolutions, columns classes), per-image overlays with the
radiologists' boxes, and localization scores (pointing game, IoU, energy in box)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cxrlab.dashboard.views.common import (READ_ERRORS, chart, data, pick_record, read_or_warn, readable_frame,
                                           run_index, show_error)

st.title("Explain")
index = run_index()

studies = [r for r in index.of_kind("study") if r.info.get("has_cam_grid")]
explanations = [r for r in index.of_kind("explanation") if r.readable]
localizations = [r for r in index.of_kind("localization") if r.readable]

if explanations:
    st.subheader("CAM grid — rows resolutions, columns classes")
    try:
        table = data.explanation_table(r.path for r in explanations)
    except READ_ERRORS as err:
        show_error(err, "Cannot read explanations.csv")
        table = None
    if table is not None and not table.empty:
        methods = sorted(table["method"].astype(str).unique())
        method = st.selectbox("Method", methods, key="explain_method") if len(methods) > 1 else methods[0]
        table = table[table["method"].astype(str) == method]
        image = st.selectbox("Image", sorted(table["image_name"].unique()), key="explain_image")
        grid = data.cam_grid(table, image)
        if grid.empty:
            st.info("No map of this image records its resolution.")
        for resolution, row in grid.iterrows():
            cells = st.columns([1] + [4] * len(grid.columns))
            cells[0].markdown(f"**{int(resolution)} px**")
            for col, (label, path) in zip(cells[1:], row.items()):
                if isinstance(path, str):
                    match = table[(table["overlay_path"] == path)]
                    prob = float(match["probability"].iloc[0]) if len(match) else float("nan")
                    col.image(path, caption=f"{label}: p={prob:.2f}", width=260)

if studies:
    st.subheader("Study CAM grid (best run per resolution and class)")
    record = pick_record(studies, "Study", key="explain_study")
    if record is not None:
        st.image(str(record.path / "fig_cam_grid.png"), width=760)
        path = record.path / "localization_best_runs.csv"
        if path.is_file():
            try:
                best = pd.read_csv(path)
                st.dataframe(readable_frame(best), hide_index=True, width="stretch")
                fig = go.Figure()
                for name, part in best.groupby("class", sort=True):
                    fig.add_trace(go.Scatter(
                        x=part["resolution"], y=part["pointing_hit_rate"], mode="lines+markers", name=str(name),
                        error_y={"type": "data", "symmetric": False,
                                 "array": part["pointing_ci_high"] - part["pointing_hit_rate"],
                                 "arrayminus": part["pointing_hit_rate"] - part["pointing_ci_low"]}))
                fig.update_layout(title="Pointing-game hit rate of the best run by resolution (Wilson 95% CI)",
                                  xaxis_title="resolution (px)", yaxis_title="hit rate", yaxis_range=[0, 1.05])
                chart(fig, key="study_pointing")
            except READ_ERRORS as err:
                show_error(err, f"Cannot read {path}")

if localizations:
    st.subheader("Localization scores against boxes")
    record = pick_record(localizations, "Localization output", key="explain_loc")
    if record is not None:
        tables = read_or_warn(record, data.localization_tables)
        if tables is None:
            st.stop()
        summary = tables["summary"]
        st.dataframe(readable_frame(summary), hide_index=True, width="stretch")
        fig = go.Figure()
        for metric, title in (("pointing", "pointing hit rate"), ("iou", "IoU"), ("energy_in_box", "energy in box")):
            value = summary["pointing_hit_rate"] if metric == "pointing" else summary[f"{metric}_mean"]
            fig.add_trace(go.Bar(x=summary["class"], y=value, name=title, error_y={
                "type": "data", "symmetric": False, "array": summary[f"{metric}_ci_high"] - value,
                "arrayminus": value - summary[f"{metric}_ci_low"]}))
        fig.add_trace(go.Scatter(x=summary["class"], y=summary["box_fraction_mean"], mode="markers",
                                 name="box share (uniform map)", marker={"symbol": "line-ew-open", "size": 30}))
        fig.update_layout(barmode="group", title="Localization per class (95% CI)", yaxis_range=[0, 1.05],
                          height=420)
        chart(fig, key="loc_chart")
        per_image = tables["per_image"]
        if not per_image.empty:
            st.markdown("**Per image** (lowest energy in box first)")
            per_image = per_image.sort_values("energy_in_box")
            st.dataframe(readable_frame(per_image.drop(columns=["overlay_path"])), hide_index=True, width="stretch")
            with_overlay = per_image.dropna(subset=["overlay_path"])
            if not with_overlay.empty:
                labels = [f"{i} — {t}" for i, t in zip(with_overlay["image"], with_overlay["target"])]
                pick = st.selectbox("Overlay (map with the radiologist's boxes)", labels, key="loc_overlay")
                row = with_overlay.iloc[labels.index(pick)]
                st.image(row["overlay_path"], caption=(f"p={row['probability']:.2f}, pointing "
                                                       f"{'hit' if row['pointing_hit'] else 'miss'}, "
                                                       f"IoU {row['iou']:.2f}, energy {row['energy_in_box']:.2f}"),
                         width=420)
