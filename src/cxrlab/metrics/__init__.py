"""cxrlab.metrics."""
