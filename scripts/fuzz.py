"""Long fuzz runs of the input path: thousands of mutated DICOMs, PNGs and JPEGs.

Generates ``--cases`` seeded mutations (:mod:`cxrlab.data.fuzzing`: the real DICOMs that
pydicom and pydicom-data ship, large radiographs included with ``--large``, and PNG/JPEG
phantoms), runs each through ``read_image -> preprocess -> to_tensor`` in child
processes under ``RLIMIT_AS`` (address space after imports + ``--memory-mb``) and a
per-case time limit, and prints a Markdown table of outcomes by mutation class. Every
case not ``ok`` or ``cxrlab-error`` is listed after the table. The exit status is 1 when
any case has another outcome (except the known gap ``--allow`` names).

    nice -n 10 python scripts/fuzz.py --cases 6000 --seed 2026 --large \\
        --max-pixels 100000000 --memory-mb 2048 --json /tmp/fuzz.json

Documented in ``benchmarks/README.md`` (section "Input fuzzing").
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import asdict

from cxrlab.data.fuzzing import ACCEPTABLE, format_table, generate_cases, run_cases, summarize
from cxrlab.utils import atomic_write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--large", action="store_true",
                        help="add the large radiographs of pydicom-data (RG1, RG3, ...)")
    parser.add_argument("--max-pixels", type=int, default=100_000_000)
    parser.add_argument("--memory-mb", type=int, default=2048)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per case")
    parser.add_argument("--batch", type=int, default=250, help="cases per child process")
    parser.add_argument("--json", default=None, help="write every result here")
    parser.add_argument("--allow", nargs="*", default=[],
                        help="case kinds whose silent accepts are a known, reported gap")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    cases = generate_cases(args.cases, seed=args.seed, large=args.large,
                           max_pixels=args.max_pixels)
    generated = time.perf_counter() - started
    print(f"generated {len(cases)} cases in {generated:.1f} s "
          f"({sum(len(c.data) for c in cases) / 1e6:.1f} MB)", flush=True)
    seen: Counter = Counter()

    def progress(result) -> None:
        seen[result.outcome] += 1
        done = sum(seen.values())
        if done % 500 == 0:
            print(f"  {done}/{len(cases)} {dict(seen)}", flush=True)

    results = run_cases(cases, memory_mb=args.memory_mb, case_timeout_s=args.timeout,
                        max_pixels=args.max_pixels, batch=args.batch, progress=progress)
    elapsed = time.perf_counter() - started - generated
    table = summarize(results)
    print(f"\n{len(results)} cases, seed {args.seed}, max_pixels {args.max_pixels}, "
          f"RLIMIT_AS = imports + {args.memory_mb} MiB, {args.timeout:.0f} s a case; "
          f"ran in {elapsed:.0f} s (generation {generated:.0f} s)\n")
    print(format_table(table))
    slowest = max(results, key=lambda r: r.seconds)
    print(f"\nslowest case: {slowest.case_id} {slowest.seconds:.2f} s")
    failures = [r for r in results if r.outcome not in ACCEPTABLE]
    known = [r for r in failures if r.outcome == "silent-accept" and r.kind in args.allow]
    failures = [r for r in failures if r not in known]
    if known:
        print(f"\n{len(known)} silent accept(s) of the known gap {args.allow}")
    for result in failures:
        print(f"{result.case_id} {result.kind} ({result.source}) {result.outcome}: "
              f"{result.detail}")
    if args.json:
        atomic_write_json(args.json, {"args": vars(args), "elapsed_s": elapsed,
                                      "table": {k: dict(v) for k, v in table.items()},
                                      "results": [asdict(r) for r in results]})
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
