"""Load on the inference service: N uploads from K concurrent clients, all on 127.0.0.1,
with batching off and on, compared in one run.

1. Synthesizes a CheXpert-layout set of SYNTHETIC phantoms and trains the demo recipe's
   small CNN on it (``configs/demo.yaml``, CPU, a few epochs) — a phantom-trained model.
2. For each configuration — ``--max-batch 1`` (one image per model call: the service
   before batching, the baseline), then ``--max-batch B --batch-wait-ms W`` (batched), and
   each of them again with ``--backend onnx`` when ``--onnx`` is given — starts
   ``cxrlab serve`` in a child process on 127.0.0.1 (a free port) with a fresh SQLite
   worklist and waits for ``/healthz``.
3. ``--clients`` threads, each with its own HTTP connection, upload ``--uploads`` phantom
   PNGs in total (the same files, in the same order, for every configuration); a further
   thread polls ``GET /v1/worklist`` during the load to show that reads stay responsive
   while inference runs. ``--rounds R`` cycles through the configurations R times
   (baseline, batched, baseline, batched, ...) so a change of the machine's load hits
   both; each configuration's median round is reported.
4. Prints a table (and writes ``OUT/bench_serve_load.json``): errors, images/s, upload
   latency p50/p99, the ratios to the baseline (images/s up, p99 down is better), the
   mean batch the service reports in ``/healthz``, and the load average; then one full
   request/response for the real radiograph RG1_UNCR.dcm (pydicom-data).

Every request goes to 127.0.0.1 only; the loops are bounded in count and time.

Usage::

    python benchmarks/bench_serve_load.py --uploads 200 --clients 8 --max-batch 8 --batch-wait-ms 10 \\
        [--rounds 3] [--onnx] [--out DIR --reuse]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

SERVE_CLI = """
import sys, typer
from cxrlab.cli.serve import register
app = typer.Typer(pretty_exceptions_enable=False)
@app.callback()
def main() -> None:
    pass
register(app)
app(sys.argv[1:])
"""
TOKEN = "bench-token-0123456789"


def train_phantom_model(out: Path, n_images: int, size: int, epochs: int) -> Path:
    """The demo recipe trained on phantoms; returns the run directory."""
    from cxrlab.config import load_config
    from cxrlab.data.synthetic_layouts import write_dataset
    from cxrlab.tasks.classification.train import train
    from cxrlab.tasks.classification.demo import demo_config_path

    data_dir = out / "data"
    write_dataset("chexpert", data_dir, n=n_images, size=size, seed=0, overwrite=True)
    cfg = load_config(demo_config_path(), [
        f"data.options.csv={data_dir / 'CheXpert-v1.0-small' / 'train.csv'}", f"data.options.root={data_dir}",
        f"output.root={out}", "output.mlflow=false", f"train.phases.0.epochs={epochs}", "name=serve_bench"])
    return train(cfg, progress=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(run_dir: Path, db: Path, port: int, workers: int, log: Path, extra: Sequence[str] = ()
                 ) -> subprocess.Popen:
    env = {**os.environ, "CXRLAB_API_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    args = ["serve", "--classifier", str(run_dir), "--db", str(db), "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), *extra]
    return subprocess.Popen([sys.executable, "-c", SERVE_CLI, *args], stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, env=env)


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError("server not ready")


def run_load(base: str, files: list[Path], uploads: int, clients: int) -> dict:
    import httpx

    headers = {"Authorization": f"Bearer {TOKEN}"}
    payloads = [(p.name, p.read_bytes()) for p in files]
    stop = threading.Event()
    get_latencies: list[float] = []

    def poll_worklist() -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
            while not stop.is_set() and len(get_latencies) < 10_000:
                started = time.perf_counter()
                http.get("/v1/worklist", params={"limit": 20}).raise_for_status()
                get_latencies.append(time.perf_counter() - started)
                stop.wait(0.1)

    def client(k: int) -> list[tuple[int, float]]:
        out = []
        with httpx.Client(base_url=base, headers=headers, timeout=120) as http:
            for i in range(k, uploads, clients):
                name, data = payloads[i % len(payloads)]
                started = time.perf_counter()
                try:
                    code = http.post("/v1/studies", files={"file": (name, data, "image/png")}).status_code
                except httpx.HTTPError:
                    code = -1
                out.append((code, time.perf_counter() - started))
        return out

    poller = threading.Thread(target=poll_worklist, daemon=True)
    poller.start()
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for part in pool.map(client, range(clients)) for r in part]
    wall = time.perf_counter() - started
    stop.set()
    poller.join(timeout=30)
    latencies = np.array([s for _, s in results]) * 1000
    gets = np.array(get_latencies or [float("nan")]) * 1000
    return {"uploads": len(results), "clients": clients, "errors": sum(code != 200 for code, _ in results),
            "wall_s": round(wall, 2), "images_per_s": round(len(results) / wall, 2),
            "latency_ms": {q: round(float(np.percentile(latencies, int(q[1:]))), 1) for q in ("p50", "p95", "p99")},
            "get_worklist_ms": {"n": int(len(get_latencies)), "p50": round(float(np.nanpercentile(gets, 50)), 1),
                                "p99": round(float(np.nanpercentile(gets, 99)), 1)}}


def configurations(max_batch: int, wait_ms: float, onnx: bool) -> dict[str, list[str]]:
    """Name -> extra ``cxrlab serve`` arguments; the first is the baseline."""
    out = {"max-batch 1": ["--max-batch", "1"],
           f"max-batch {max_batch}, wait {wait_ms:g} ms": ["--max-batch", str(max_batch),
                                                           "--batch-wait-ms", str(wait_ms)]}
    if onnx:
        out.update({f"{name}, onnx": [*args, "--backend", "onnx"] for name, args in list(out.items())})
    return out


def serve_and_load(run_dir: Path, out: Path, pngs: list[Path], args: argparse.Namespace, name: str,
                   extra: list[str], round_: int, exchange: bool = False) -> dict:
    """One configuration: a fresh server and worklist, the load, the batch statistics."""
    import httpx

    folder = out / "servers" / f"{''.join(c if c.isalnum() else '_' for c in name)}_{round_}"
    folder.mkdir(parents=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(run_dir, folder / "worklist.sqlite", port, args.workers, folder / "server.log", extra)
    try:
        wait_ready(base, proc)
        load_before = os.getloadavg()[0]
        report = run_load(base, pngs, args.uploads, args.clients)
        report["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        report["batching"] = httpx.get(f"{base}/healthz", timeout=30).json().get("batching")
        if exchange:
            report["real_radiograph"] = real_radiograph_exchange(base)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return report


def summarize(results: dict[str, list[dict]]) -> dict[str, dict]:
    """Each configuration's median round (by images/s), with the ratios to the first (baseline)."""
    table: dict[str, dict] = {}
    for name, rounds in results.items():
        ordered = sorted(rounds, key=lambda r: r["images_per_s"])
        table[name] = {**ordered[len(ordered) // 2], "rounds_images_per_s": [r["images_per_s"] for r in rounds]}
    baseline = next(iter(table.values()))
    for row in table.values():
        row["speedup"] = round(row["images_per_s"] / baseline["images_per_s"], 2)
        row["p99_ratio"] = round(row["latency_ms"]["p99"] / baseline["latency_ms"]["p99"], 2)
    return table


def print_table(table: dict[str, dict]) -> None:
    print(f"{'configuration':<34} {'errors':>6} {'images/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'x img/s':>8} "
          f"{'x p99':>6} {'mean batch':>10} {'load':>11}")
    for name, row in table.items():
        batch = (row.get("batching") or {}).get("mean_batch") or 1.0
        load = "-".join(f"{x:g}" for x in row["load_average_1min"])
        print(f"{name:<34} {row['errors']:>6} {row['images_per_s']:>9} {row['latency_ms']['p50']:>8} "
              f"{row['latency_ms']['p99']:>8} {row['speedup']:>8} {row['p99_ratio']:>6} {batch:>10} {load:>11}")


def real_radiograph_exchange(base: str) -> dict:
    """One full request/response for RG1_UNCR.dcm."""
    import httpx

    from cxrlab.tasks.classification.demo import real_radiograph

    path = real_radiograph()
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as http:
        response = http.post("/v1/studies", files={"file": (path.name, path.read_bytes(), "application/dicom")})
    return {"request": f"POST /v1/studies multipart file={path.name} ({path.stat().st_size} bytes), "
                       "Authorization: Bearer <token>",
            "status": response.status_code, "response": response.json()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="inference threads of the server")
    parser.add_argument("--max-batch", type=int, default=8, help="images per model call when batching")
    parser.add_argument("--batch-wait-ms", type=float, default=10.0, help="batching wait bound")
    parser.add_argument("--rounds", type=int, default=1, help="cycles through the configurations (median)")
    parser.add_argument("--onnx", action="store_true",
                        help="also serve with --backend onnx (the run is exported with `cxrlab export` first)")
    parser.add_argument("--n-images", type=int, default=240, help="phantoms to train on")
    parser.add_argument("--size", type=int, default=128, help="phantom side in pixels")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true", help="reuse OUT's phantoms and trained run if present")
    args = parser.parse_args()

    out = args.out or Path(tempfile.mkdtemp(prefix="cxrlab-serve-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    run_dir = out / "serve_bench"
    if not (args.reuse and (run_dir / "best_auroc.pt").is_file()):
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir = train_phantom_model(out, args.n_images, args.size, args.epochs)
        print(f"trained {run_dir} in {time.perf_counter() - started:.0f} s")
    if args.onnx:                                           # the ONNX file the onnx backend loads
        subprocess.run([sys.executable, "-m", "cxrlab.cli.main", "export", str(run_dir)], check=True)
    shutil.rmtree(out / "servers", ignore_errors=True)     # worklists, PNGs and logs of earlier runs
    images = sorted((out / "data").rglob("*.jpg"))[:50] or sorted((out / "data").rglob("*.png"))[:50]
    pngs = []
    import cv2

    for i, path in enumerate(images):                       # upload PNGs (lossless, as PACS exports)
        target = out / "upload" / f"phantom_{i}.png"
        target.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(target), cv2.imread(str(path), cv2.IMREAD_UNCHANGED))
        pngs.append(target)
    configs = configurations(args.max_batch, args.batch_wait_ms, args.onnx)
    results: dict[str, list[dict]] = {name: [] for name in configs}
    for round_ in range(args.rounds):
        for name, extra in configs.items():
            report = serve_and_load(run_dir, out, pngs, args, name, extra, round_,
                                    exchange=round_ == 0 and name == next(iter(configs)))
            results[name].append(report)
            lat = report["latency_ms"]
            print(f"round {round_ + 1}, {name}: {report['errors']} errors, {report['images_per_s']} images/s, "
                  f"p50 {lat['p50']} ms, p99 {lat['p99']} ms, load {report['load_average_1min']}", flush=True)
    exchange = results[next(iter(configs))][0].pop("real_radiograph")
    table = summarize(results)
    report = {"uploads": args.uploads, "clients": args.clients, "configurations": table,
              "real_radiograph": exchange,
              "machine": f"{os.cpu_count()} CPU cores, no GPU; server --workers {args.workers}; SYNTHETIC phantoms"}
    (out / "bench_serve_load.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{args.uploads} uploads from {args.clients} clients on 127.0.0.1 ({report['machine']}), "
          f"median of {args.rounds} round(s):")
    print_table(table)
    gets = next(iter(table.values()))["get_worklist_ms"]
    print(f"GET /v1/worklist during the baseline's load: p50 {gets['p50']} ms, p99 {gets['p99']} ms (n={gets['n']})")
    print(json.dumps(exchange, indent=2))
    print(f"wrote {out / 'bench_serve_load.json'}")
    if any(row["errors"] for rounds in results.values() for row in rounds):
        sys.exit(1)


if __name__ == "__main__":
    main()
