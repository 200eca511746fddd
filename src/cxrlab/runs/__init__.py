"""Run folders: the named files a run writes, its status, and ``run.json`` (kind, format)."""
