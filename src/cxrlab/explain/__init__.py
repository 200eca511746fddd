"""cxrlab.explain: class activation maps (pytorch-grad-cam) and their localization scores.

``cxrlab.explain.cam``: :func:`~cxrlab.explain.cam.heatmap` (one image tensor + model ->
map and PNG overlay), :func:`~cxrlab.explain.cam.explain_files` (checkpoint + files ->
overlays and ``.npy`` maps). ``cxrlab.explain.localize``: pointing game, thresholded-map
IoU and energy in box against NIH boxes, per class with confidence intervals.
Import the submodules directly; this package imports nothing heavy.
"""
