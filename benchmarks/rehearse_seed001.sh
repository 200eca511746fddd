#!/usr/bin/env bash
# The README's "Training seed 001's grid on real CheXpert" steps, run as written on a
# CheXpert-v1.0-small replica (bench_full_scale.py's: the real CSV's first ROWS rows, a
# hard-linked phantom JPEG at every Path, valid.csv beside train.csv):
#   a cache built ahead with `cxrlab data cache --out`, its no-op re-run and --check;
#   `cxrlab train configs/chexpert_seed001.yaml` with `cache: auto` (finds that cache),
#   with an explicit `data.cache=DIR`, and after the data folder was moved.
# The three runs must give the same validation AUROC. Short runs: resnet18 without
# pretrained weights, 2 training batches per epoch (the recipe's phases otherwise).
#
# Usage: benchmarks/rehearse_seed001.sh [ROWS=10000] [WORK=/tmp/cxrlab-rehearsal]
set -euo pipefail
ROWS=${1:-10000}
WORK=${2:-/tmp/cxrlab-rehearsal}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
PY=${PYTHON:-python}
rm -rf "$WORK"
mkdir -p "$WORK"
"$PY" - "$HERE" "$WORK" "$ROWS" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import bench_full_scale as bench
work, rows = Path(sys.argv[2]), int(sys.argv[3])
phantoms = bench.write_phantoms(work / "phantoms", 64)
bench.build_replica(work / "data", rows, phantoms)
PY
cd "$WORK/data"
CACHE=(data cache --dataset chexpert --csv CheXpert-v1.0-small/train.csv --root . --size 320
       --out runs/cache/chexpert-320 --no-progress)
SHORT=(model.arch=resnet18 model.pretrained=null train.limit_train_batches=2 data.num_workers=2)
run() { echo "== $1"; shift; /usr/bin/env time -f "   %e s wall" "$PY" -m cxrlab.cli.main "$@" 2>&1 |
        grep -E "cache|nothing to do|match|ok|wall|Error|error" | grep -v "mlflow" ; }
run "cache built ahead with --out" "${CACHE[@]}"
run "the same command again: a no-op" "${CACHE[@]}"
run "check with checksums" data cache --check runs/cache/chexpert-320 --checksums
run "train, cache: auto" train "$REPO/configs/chexpert_seed001.yaml" "${SHORT[@]}" name=auto --no-progress
run "train, data.cache=DIR" train "$REPO/configs/chexpert_seed001.yaml" "${SHORT[@]}" \
    data.cache=runs/cache/chexpert-320 name=explicit --no-progress
cd "$WORK" && mv data moved && cd moved
run "train after moving the data folder, cache: auto" train "$REPO/configs/chexpert_seed001.yaml" \
    "${SHORT[@]}" name=moved --no-progress
"$PY" - <<'PY'
import json
aurocs = {name: json.load(open(f"runs/{name}/metrics.json"))["valid"]["mean_auroc"]
          for name in ("auto", "explicit", "moved")}
print("valid mean AUROC:", {k: round(v, 4) for k, v in aurocs.items()})
if len(set(aurocs.values())) != 1:
    raise SystemExit("the three runs differ")
print("ok: the three runs trained from the same caches")
PY
