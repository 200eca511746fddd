#!/usr/bin/env bash
# One-call GPU check (issue 17): throughput of every model and the loader, one JSON + a table.
#   bash benchmarks/gpu_check.sh [--out FILE] [--seconds S]   on a GPU machine (< 8 min)
#   bash benchmarks/gpu_check.sh --smoke                      on CPU, seconds (make test)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONPATH="${here}/../src${PYTHONPATH:+:${PYTHONPATH}}"
PY="${PYTHON:-python}"
if [[ " $* " != *" --smoke "* ]]; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
fi
exec timeout 480 "${PY}" "${here}/gpu_check.py" "$@"
