"""The names of the label policies, apart from :mod:`cxrlab.data.labels` (which needs
pandas), so a command's ``--help`` can list them without importing pandas."""

from __future__ import annotations

#: What an uncertain (``-1``) label becomes: the CheXpert paper's U-Ones, U-Zeros,
#: U-Ignore and U-MultiClass.
POLICIES = ("ones", "zeros", "ignore", "multiclass")
#: What a blank label becomes.
BLANK_POLICIES = ("unknown", "negative")
