"""Image page: open a DICOM/PNG/JPEG from a run's data with window/level, next to the run's prediction."""

from __future__ import annotations

import numpy as np
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from cxrlab.dashboard.views.common import (READ_ERRORS, chart, data, file_mtime, pick_record, read_image_cached,
                                           run_index, show_error)

MAX_SIDE = 1024  # images are shown with at most this many pixels per side (a stride, for speed)

st.title("Image")
index = run_index()
record = pick_record(index.of_kind("classification", "screening", "seg_predictions"), "Run", key="image_run",
                     help="Images come from the run's own data (its split, predictions or evaluation sets)")
if record is None:
    st.stop()
split = None
if record.kind == "classification":
    splits = [s for s in ("test", "valid") if (record.path / f"predictions_{s}.csv").is_file()]
    split = st.radio("Split", splits, horizontal=True, key="image_split") if splits else None


@st.cache_data(max_entries=32, show_spinner=False)
def images_of(name: str, signature: tuple, split: str | None):
    return data.run_images(index.get(name), split)


try:
    images = images_of(record.name, record.signature, split)
except READ_ERRORS as err:
    show_error(err, f"Cannot list the images of {record.name}")
    st.stop()
if images.empty:
    st.info("This run lists no image.")
    st.stop()
labels = [f"{p.split('/')[-1]}  ·  {s}" if isinstance(s, str) else p.split("/")[-1]
          for p, s in zip(images["path"].astype(str),
                          images["study_id"] if "study_id" in images else images.get("source", [None] * len(images)))]
choice = st.selectbox(f"Image ({len(images)})", range(len(images)), format_func=lambda i: labels[i], key="image_pick")
row = images.iloc[int(choice)]
path = str(row["path"])
try:
    pixels, meta = read_image_cached(path, file_mtime(path))
except READ_ERRORS as err:
    show_error(err, f"Cannot read {path}")
    st.stop()

center0, width0 = data.default_window(pixels)
lo, hi = float(np.min(pixels)), float(np.max(pixels))
span = max(hi - lo, 1.0)
left, right = st.columns([3, 2])
with right:
    center = st.slider("Level (window center)", lo, hi, float(np.clip(center0, lo, hi)), step=span / 500,
                       key=f"level_{path}")
    width = st.slider("Window width", span / 500, 2 * span, float(np.clip(width0, span / 500, 2 * span)),
                      step=span / 500, key=f"width_{path}")
    hist, edges = np.histogram(pixels[:: max(1, pixels.shape[0] // 256), :: max(1, pixels.shape[1] // 256)], bins=128)
    fig = go.Figure(go.Bar(x=edges[:-1], y=hist, marker_color="#888"))
    fig.add_vrect(x0=center - width / 2, x1=center + width / 2, fillcolor="orange", opacity=0.2, line_width=0)
    fig.update_layout(title="Window on the histogram", height=220, bargap=0, showlegend=False)
    chart(fig, key="image_hist")
    st.dataframe(data.image_meta(meta), hide_index=True, width="stretch")
    probs = {c[5:]: float(row[c]) for c in row.index if c.startswith("prob_") and np.isfinite(row[c])}
    probs.update({c[2:].replace("/", " · "): float(row[c]) for c in row.index
                  if c.startswith("p_") and isinstance(row[c], (int, float)) and np.isfinite(row[c])})
    if "abnormal_probability" in row.index:
        st.metric("Screening decision", "abnormal" if int(row["abnormal_pred"]) else "normal",
                  help=f"P(abnormal) = {row['abnormal_probability']:.3f}")
    if probs:
        truth = {c[6:]: row[c] for c in row.index if c.startswith("label_")}
        bars = go.Figure(go.Bar(x=list(probs.values()), y=list(probs.keys()), orientation="h",
                                text=[f"{v:.3f}" + (f" (label {truth[k]:g})" if k in truth and truth[k] == truth[k]
                                                    else "") for k, v in probs.items()]))
        bars.update_layout(title=f"{record.name}: prediction", xaxis_range=[0, 1], height=80 + 30 * len(probs))
        chart(bars, key="image_probs")
with left:
    stride = max(1, int(np.ceil(max(pixels.shape) / MAX_SIDE)))
    shown = data.window_image(pixels[::stride, ::stride], center, width)
    fig = px.imshow(shown, color_continuous_scale="gray", zmin=0, zmax=255, binary_string=True)
    fig.update_layout(title=f"{path.split('/')[-1]} ({meta.format}, {meta.shape[0]}×{meta.shape[1]})", height=620,
                      xaxis_visible=False, yaxis_visible=False)
    chart(fig, key="image_view")
