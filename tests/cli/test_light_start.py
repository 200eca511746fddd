"""Light commands start light: no torch, scipy or pandas behind --help; no torch behind data stats.

Measured in a fresh interpreter, as a user's shell starts ``cxrlab``. The wall time is
logged, not asserted (a loaded CI machine would make it flaky); the memory is asserted:
importing torch alone takes the process past 300 MiB.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import json, sys, time
start = time.perf_counter()
from cxrlab.cli.main import app
try:
    app(sys.argv[1:], prog_name="cxrlab")
except SystemExit as exit:
    code = exit.code
else:
    code = 0
print(json.dumps({"code": code, "torch": "torch" in sys.modules,
                  "scipy_stats": "scipy.stats" in sys.modules,
                  "lightning": "lightning" in sys.modules,
                  "heavy": sorted(m for m in ("torch", "scipy", "pandas", "lightning", "cv2")
                                  if m in sys.modules),
                  "seconds": time.perf_counter() - start,
                  # VmHWM: this process's peak RSS (ru_maxrss would carry the pytest
                  # parent's peak across fork + exec)
                  "max_rss_mib": [int(line.split()[1]) / 1024 for line in open("/proc/self/status")
                                  if line.startswith("VmHWM:")][0]}))
"""

LIGHT = [["--help"], ["data", "--help"], ["data", "stats", "--help"], ["data", "rle", "--help"],
         ["data", "rle", "decode", "--help"], ["data", "rle", "encode", "--help"],
         ["metrics", "--help"], ["metrics", "classification", "--help"],
         ["metrics", "segmentation", "--help"], ["metrics", "brats", "--help"]]


def probe(args: list[str], tmp_path) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args", LIGHT, ids=[" ".join(a) for a in LIGHT])
def test_light_commands_do_not_import_torch(args, tmp_path):
    result = probe(args, tmp_path)
    assert result["code"] == 0
    # --help needs none of the libraries the command bodies use (pandas, OpenCV included)
    assert result["heavy"] == [], result
    assert result["max_rss_mib"] < 200, result


def test_data_stats_runs_without_torch(tmp_path, xrv_data):
    import pandas as pd

    csv = tmp_path / "train.csv"
    pd.read_csv(xrv_data / "chexpert_train.csv.gz", nrows=200).to_csv(csv, index=False)
    result = probe(["data", "stats", "-d", "chexpert", "--csv", str(csv), "--json"], tmp_path)
    assert result["code"] == 0 and not result["torch"], result
    assert result["max_rss_mib"] < 200, result


def test_heavy_command_still_loads(tmp_path):
    result = probe(["model", "--help"], tmp_path)  # model info needs timm: loaded on demand
    assert result["code"] == 0


def test_metrics_classification_runs_without_torch(tmp_path):
    csv = tmp_path / "scores.csv"
    csv.write_text("y,p\n" + "".join(f"{k % 2},{(k % 2) * 0.5 + k / 100}\n" for k in range(40)))
    result = probe(["metrics", "classification", "--csv", str(csv), "--label-col", "y",
                    "--score-col", "p", "--json"], tmp_path)
    assert result["code"] == 0 and not result["torch"] and not result["lightning"], result
    assert result["max_rss_mib"] < 200, result
