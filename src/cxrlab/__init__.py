"""cxrlab: deep learning on chest radiographs, from one YAML recipe per experiment."""

__version__ = "0.1.0"
