"""Brain-tumour segmentation and survival prediction on BraTS (seed 004 poster, Weninger et al. 2018).

recipe -> data -> train -> predict/evaluate -> survival -> demo; MONAI provides the
network, patch sampling, caching, sliding-window inference, loss and HD95.
"""
