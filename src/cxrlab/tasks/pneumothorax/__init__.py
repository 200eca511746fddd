"""Pneumothorax segmentation: baseline U-Net vs the classifier-gated cascade (seed 002)."""
