"""Normal screening: per-disease multi-task ensemble and an SVM (seed 003)."""
