"""cxrlab.engine."""
