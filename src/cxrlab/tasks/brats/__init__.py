"""Brain-tumour segmentation and survival prediction on BraTS (seed 004 poster, Weninger et al. 2018).

recipe (config/brats.py) -> data -> train -> evaluate -> survival -> demo; the predictor is
inference/brats.py, the network models/unet3d.py, brain crop data/brain.py. MONAI provides the
network, patch sampling, caching, sliding-window inference, loss and HD95.
"""
