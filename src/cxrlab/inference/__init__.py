"""Prediction from trained runs, one predictor per task kind; never imports training code."""
