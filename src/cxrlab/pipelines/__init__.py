"""cxrlab.pipelines."""
