"""BraTS page: the runs' per-region Dice/HD95, one run's region and per-case tables, and a slice
viewer of a case's sequence with the reference and the run's prediction (NCR red, ED green, ET yellow)."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from cxrlab.dashboard import brats as brats_data
from cxrlab.dashboard.views.common import (READ_ERRORS, chart, file_mtime, pick_record, read_or_warn, readable_frame,
                                           run_index, show_error)
from cxrlab.data.brain import PLANES, colour_labels, plane_slice, tumour_centre, window_uint8
from cxrlab.data.datasets.brats import MODALITIES, REGIONS
from cxrlab.errors import InputError

st.title("BraTS")
index = run_index()
records = [r for r in index.of_kind("brats") if r.readable]

st.subheader("Runs — mean Dice and HD95 (mm) per region on their scored cases")
st.dataframe(readable_frame(brats_data.runs_table(records)), hide_index=True, width="stretch")

scored = [r for r in records if r.info.get("regions")]
record = pick_record(scored, "BraTS run", key="brats_run")


@st.cache_data(max_entries=8, show_spinner="Reading the case ...")
def _case(run_dir: str, case_id: str, mtime: float) -> brats_data.CaseViews:
    return brats_data.load_case_views(run_dir, case_id)


if record is not None:
    metrics = read_or_warn(record, brats_data.read_metrics)
    if metrics is not None:
        st.caption(f"{metrics.get('n_cases')} {metrics.get('split', 'test')} case(s); empty regions scored the "
                   "BraTS way (both empty: Dice 1, HD95 0; one empty: Dice 0, HD95 373.13 mm)")
        st.dataframe(readable_frame(brats_data.region_table(metrics)), hide_index=True, width="stretch")
        cases = brats_data.case_table(metrics)
        fig = go.Figure()
        for region in REGIONS:
            fig.add_trace(go.Box(y=cases[f"{region}_dice"], name=region, boxpoints="all", hovertext=cases["case"],
                                 hovertemplate="%{hovertext}<br>Dice %{y:.3f}<extra>" + region + "</extra>"))
        fig.update_layout(title="Dice per case", yaxis_title="Dice", yaxis_range=[0, 1.02], height=340,
                          showlegend=False)
        chart(fig, key="brats_dice")
        st.markdown("**Per case** (worst mean Dice first)")
        st.dataframe(readable_frame(cases), hide_index=True, width="stretch")

        st.subheader("Slice viewer")
        predicted = brats_data.predicted_cases(record.path)
        if not predicted:
            st.info("The run wrote no predictions (cxrlab brats evaluate RUN_DIR writes predictions/<case>.nii.gz).")
        else:
            cols = st.columns(3)
            case_id = cols[0].selectbox("Case", predicted, key="brats_case")
            modality = cols[1].selectbox("Sequence", list(MODALITIES), index=MODALITIES.index("flair"),
                                         key="brats_modality")
            plane = cols[2].radio("Plane", list(PLANES), horizontal=True, key="brats_plane")
            prediction_file = record.path / brats_data.PREDICTIONS / f"{case_id}.nii.gz"
            try:
                views = _case(str(record.path), case_id, file_mtime(prediction_file))
            except (InputError, *READ_ERRORS) as err:
                show_error(err, f"Cannot read {case_id}")
                views = None
            if views is not None:
                axis = PLANES[plane]
                depth = views.image.shape[1 + axis]
                centre = tumour_centre(views.prediction, views.reference)
                start = int(centre[axis]) if centre is not None else depth // 2
                slice_index = st.slider(f"{plane} slice", 0, depth - 1, start, key=f"brats_slice_{plane}")
                gray = plane_slice(window_uint8(views.image[MODALITIES.index(modality)]), plane, slice_index)
                tiles = st.columns(3)
                tiles[0].image(colour_labels(gray, None), caption=f"{modality}", width="stretch")
                for column, labels, title in ((tiles[1], views.reference, "reference"),
                                              (tiles[2], views.prediction, "prediction")):
                    if labels is None:
                        column.info(f"no {title}")
                    else:
                        column.image(colour_labels(gray, plane_slice(labels, plane, slice_index)), caption=title,
                                     width="stretch")
                st.caption(f"NCR red · ED green · ET yellow; voxel {views.spacing[0]:g} x {views.spacing[1]:g} x "
                           f"{views.spacing[2]:g} mm")
