"""Knee MRI (MRNet) page: an exam's three planes with a slice slider each, and the class
activation map of the slice that gave each network's maximum for a chosen task.

The CAMs are the files ``cxrlab mrnet evaluate`` (and ``train``) writes for the first held-out
exams (``RUN/cams/<exam>_<task>_<plane>.npz``); the series come from the run's ``data.root``.
"""

from __future__ import annotations

import json

import plotly.graph_objects as go
import streamlit as st

from cxrlab.dashboard.views.common import READ_ERRORS, chart, data, pick_record, run_index, show_error

PLANES = ("sagittal", "coronal", "axial")

st.title("Knee MRI (MRNet)")
index = run_index()
record = pick_record([r for r in index.of_kind("mrnet") if r.readable], "MRNet run", key="mrnet_run")
if record is None:
    st.stop()
models = record.info.get("models", {})
if models:
    rows = [{"task": task, "model": model, **scores} for task, per in models.items() for model, scores in per.items()]
    st.subheader("Held-out exams: AUROC, and sensitivity / specificity / accuracy at the stored threshold")
    st.dataframe(rows, hide_index=True, width="stretch")
    st.caption("combined = the task's logistic regression over the planes (fitted on the training exams).")

exams = sorted({p.name.split("_", 1)[0] for p in (record.path / "cams").glob("*.npz")})
if not exams:
    st.info("This run holds no CAMs (cams/); run `cxrlab mrnet evaluate RUN_DIR` to write them.")
    st.stop()
cols = st.columns(2)
exam = cols[0].selectbox("Exam (held out)", exams, key="mrnet_exam")
tasks = list(record.tasks) or sorted(models)
task = cols[1].selectbox("Task", tasks, key="mrnet_task")
try:
    volumes = data.mrnet_exam(record, exam)
    cams = data.mrnet_cams(record, exam, task)
except READ_ERRORS as err:
    show_error(err, f"Cannot read exam {exam}")
    st.stop()
labels = {}
if (record.path / "predictions_valid.csv").is_file():
    frame = data.mrnet_predictions(record.path / "predictions_valid.csv", tasks)
    match = frame[frame["study_id"] == exam]
    if len(match):
        labels = {"label": match.iloc[0][f"label_{task}"], "probability": match.iloc[0][f"prob_{task}"]}
if labels:
    st.markdown(f"**{task}**: label {labels['label']:g}, combined probability {labels['probability']:.3f}")

columns = st.columns(len(PLANES))
for column, plane in zip(columns, PLANES):
    if plane not in volumes:
        continue
    series = volumes[plane]
    cam = cams.get(plane)
    top = cam["slice"] if cam else series.shape[0] // 2
    with column:
        st.markdown(f"**{plane}** ({series.shape[0]} slices)")
        chosen = st.slider("Slice", 0, series.shape[0] - 1, int(top), key=f"mrnet_slice_{plane}") \
            if series.shape[0] > 1 else 0
        show = cam is not None and chosen == cam["slice"]
        picture = data.cam_overlay(series[chosen], cam["map"] if show else None)
        fig = go.Figure(go.Image(z=picture))
        fig.update_layout(margin={"l": 0, "r": 0, "t": 30, "b": 0}, height=320,
                          title=(f"CAM of the top slice {chosen} (p = {cam['probability']:.3f})" if show
                                 else f"slice {chosen}" + (f" (top slice: {cam['slice']})" if cam else "")))
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        chart(fig, key=f"mrnet_fig_{plane}")
with st.expander("Files"):
    st.code(json.dumps({"run": str(record.path), "cams": sorted(p.name for p in (record.path / "cams").glob(
        f"{exam}_{task}_*.npz"))}, indent=2))
