"""cxrlab.data.datasets."""
