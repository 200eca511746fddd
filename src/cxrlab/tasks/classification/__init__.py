"""Multi-label chest-radiograph classification (CheXpert, seeds 000/001)."""
