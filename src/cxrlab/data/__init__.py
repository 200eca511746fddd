"""cxrlab.data."""
