"""cxrlab.explain."""
