"""Streamlit entry of the cxrlab evaluation dashboard.

Run it with ``cxrlab dashboard --runs DIR`` (or ``streamlit run app.py -- --runs DIR``;
the environment variable ``CXRLAB_DASHBOARD_RUNS`` is read when no ``--runs`` is given).
The pages live in ``views/`` and are registered with ``st.navigation``; a page appears
only when the run root holds runs it can show (Runs and Image always do). The folder is
not called ``pages/`` on purpose: Streamlit runs a ``pages/`` folder next to the main
script in its legacy multipage mode, where this script would never execute.
"""

from __future__ import annotations

import streamlit as st

from cxrlab.dashboard.views.common import PAGES, available_pages, run_index, runs_root

st.set_page_config(page_title="cxrlab dashboard", page_icon="🩻", layout="wide")

root = runs_root()
index = run_index()
shown = available_pages(index)
pages = [st.Page(f"views/{PAGES[key]['file']}", title=PAGES[key]["title"], url_path=key, default=key == "runs")
         for key in shown]
with st.sidebar:
    st.markdown("### cxrlab dashboard")
    st.caption(f"run root: `{root}`")
    kinds: dict[str, int] = {}
    for record in index.records:
        kinds[record.kind] = kinds.get(record.kind, 0) + 1
    st.caption(" · ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) or "no runs found")
    if st.button("Rescan runs", help="Re-read run directories that changed since the last scan"):
        index.refresh()
        st.rerun()
st.navigation(pages).run()
