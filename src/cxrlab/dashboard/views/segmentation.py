"""Segmentation page: the cross-validation table in seed 002's Table 5.1 layout, per-image
Dice sorted worst first, and image / mask / prediction overlays."""

from __future__ import annotations

import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from cxrlab.dashboard.views.common import (READ_ERRORS, chart, data, pick_record, read_or_warn, readable_frame,
                                           run_index, show_error)

st.title("Segmentation")
index = run_index()
tabled = [r for r in index.of_kind("segmentation_cv", "segmentation") if r.readable and r.state != "incomplete"]
predicted = [r for r in index.of_kind("seg_predictions") if r.readable]

if tabled:
    st.subheader("Post-processing × model (seed 002 Table 5.1 layout)")
    record = pick_record(tabled, "Cross-validation or run", key="seg_source")
    if record is not None:
        tables = read_or_warn(record, data.segmentation_tables)
        if tables is not None:
            where = ("test folds, mean (±std) over folds" if "summary" in tables
                     else f"{tables['split']['split'].iloc[0]} split of one run")
            st.caption(where)
            st.dataframe(tables["table"], hide_index=True, width="stretch")
            long = tables["long"]
            metric_long = long[(long["metric"] == "dice_per_image")] if not long.empty else long
            if "split" in metric_long and (metric_long["split"] == "test").any():
                metric_long = metric_long[metric_long["split"] == "test"]
            if not metric_long.empty:
                rows = [r for r in data.ROW_TITLES if r in set(metric_long["row"])]
                fig = px.strip(metric_long.assign(post=metric_long["row"].map(data.ROW_TITLES)), x="post", y="value",
                               color="model", hover_data=[c for c in ("fold",) if c in metric_long],
                               category_orders={"post": [data.ROW_TITLES[r] for r in rows]})
                fig.update_layout(title="Dice per image by post-processing (one point per fold)",
                                  xaxis_title="post-processing", yaxis_title="Dice per image", height=400)
                chart(fig, key="seg_strip")

if predicted:
    st.subheader("Per-image Dice of predicted masks (worst first)")
    record = pick_record(predicted, "Prediction folder", key="seg_pred")
    if record is not None:
        dice = read_or_warn(record, data.per_image_dice, "score")
        if dice is not None and not dice.empty:
            st.caption(f"truth: {dice.attrs.get('rle_csv')}; {len(dice)} images, mean Dice {dice['dice'].mean():.3f}")
            st.dataframe(readable_frame(dice[["dice", "image_id", "truth_pixels", "pred_pixels", "gate_probability",
                                               "path"]]), hide_index=True, width="stretch")
            fig = go.Figure(go.Bar(x=list(range(1, len(dice) + 1)), y=dice["dice"], hovertext=dice["image_id"],
                                   hovertemplate="%{hovertext}<br>Dice %{y:.3f}<extra></extra>"))
            fig.update_layout(title="Dice per image, sorted", xaxis_title="rank (worst first)", yaxis_title="Dice",
                              yaxis_range=[0, 1.02], height=320)
            chart(fig, key="seg_dice")
            pick = st.selectbox("Image", dice["image_id"].tolist(), key="seg_image")
            row = dice[dice["image_id"] == pick].iloc[0]
            try:
                views = data.mask_overlay(row["path"], row["mask_path"], dice.attrs.get("rle_csv"), pick)
            except READ_ERRORS as err:
                show_error(err, f"Cannot draw {pick}")
                views = None
            if views is not None:
                cols = st.columns(3)
                cols[0].image(views["image"], caption="image", width="stretch")
                cols[1].image((views["truth"] * 255).astype("uint8"), caption="truth mask", width="stretch")
                cols[2].image(views["overlay"], caption=f"truth green, prediction red, overlap yellow — "
                                                        f"Dice {row['dice']:.3f}", width="stretch")
        elif dice is not None:
            st.info("No predicted image has a ground-truth row.")
