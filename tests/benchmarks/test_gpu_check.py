"""``benchmarks/gpu_check.sh --smoke`` runs every GPU measurement on CPU, so it cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"


def test_gpu_check_smoke(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(SCRIPT), "--smoke", "--out", str(tmp_path / "g.json")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "g.json").read_text())
    assert result["smoke"] is True
    for key in ("classifier_synthetic", "classifier_loader", "classifier_loader_uint8", "unet_fp32", "unet_bf16",
                "screening_ensemble", "screening_shared"):
        assert result[key] > 0, key
    assert len(result["mini_study"]) == 4 and all(v > 0 for v in result["mini_study"].values())
    assert "skipped" in result["ddp"]
    assert "| loader / synthetic |" in done.stdout and "| DDP |" in done.stdout
