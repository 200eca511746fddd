"""cxrlab's evaluation dashboard (Streamlit + Plotly) over run directories.

``cxrlab.dashboard.index`` finds and summarises run directories, ``cxrlab.dashboard.data``
turns them into the tables and arrays each page shows, and ``app.py`` (with ``views/``)
is the Streamlit entry started by ``cxrlab dashboard --runs DIR``. Nothing in this package
imports :mod:`cxrlab.engine` or torch: the dashboard reads only what runs wrote.
"""

from pathlib import Path

APP_PATH = Path(__file__).with_name("app.py")
"""The Streamlit script (``streamlit run APP_PATH -- --runs DIR``)."""
