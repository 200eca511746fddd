"""The dashboard's pages (Streamlit scripts registered by ``app.py``) and their shared helpers."""
