"""cxrlab.io."""
