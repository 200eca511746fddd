"""cxrlab.models."""
