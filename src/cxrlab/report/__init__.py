"""cxrlab.report."""
