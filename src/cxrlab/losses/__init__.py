"""cxrlab.losses."""
