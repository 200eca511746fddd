"""How fast the dashboard opens its Runs page on a run root with hundreds of run directories.

Makes ``--runs`` (default 600) phantom run directories by copying a real small
classification run (trained here on CheXpert-layout phantoms unless ``--template`` names
one) with its recipe and scores perturbed — a seed-001-like grid of tasks, architectures,
resolutions, seeds and losses — plus a few unreadable and half-written ones, then times:

* ``index cold``: the first scan of the run root (every run directory read);
* ``index warm``: a rescan with nothing changed (the (path, mtime) cache);
* ``Runs page (AppTest)``: Streamlit's AppTest running the app's Runs page in a fresh
  process, first run (imports, scan, table, chart) and a second run in the same process;
* with ``--browser``: ``cxrlab dashboard`` started (it indexes the root, then serves on
  127.0.0.1) and the Runs page opened in headless Chromium — seconds until its table is
  shown and until its Plotly chart is drawn, for a first and a second fresh browser profile
  and a reopening with the browser cache warm — next to the same times for a one-table,
  one-chart Streamlit page (the floor Streamlit and Plotly set on this machine).

Example::

    python benchmarks/bench_dashboard_index.py --runs 600 --browser
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

SMALL = ("split.json", "best.json", "history.csv", "predictions_valid.csv", "predictions_test.csv")
ARCHS = ("resnet50", "resnet152", "densenet121", "densenet161", "efficientnet_b3")
RESOLUTIONS = (160, 240, 320, 400, 480)
TASKS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
LOSSES = ("bce", "bce→aucm")


def train_template(work: Path) -> Path:
    """A real small classification run on phantoms (the copy source)."""
    from cxrlab.config import config_from_dict
    from cxrlab.data.synthetic_layouts import write_dataset
    from cxrlab.tasks.classification.train import train

    data = work / "phantoms"
    write_dataset("chexpert", data, n=160, size=64, seed=0)
    recipe = {"name": "template", "seed": 0,
              "data": {"dataset": "chexpert", "options": {"csv": str(data / "CheXpert-v1.0-small" / "train.csv"),
                                                          "root": str(data)},
                       "tasks": ["Cardiomegaly", "Pleural Effusion"], "frontal_only": True,
                       "split": {"train": 0.6, "valid": 0.2, "test": 0.2}, "size": 32, "channels": 1,
                       "normalization": "unit", "augment": False, "batch_size": 16, "num_workers": 0},
              "model": {"arch": "resnet10t", "head": "concat", "dropout": 0.1, "pretrained": None},
              "train": {"phases": [{"epochs": 1, "lr": 3e-3}], "optimizer": "adamw", "accelerator": "cpu",
                        "devices": 1},
              "output": {"root": str(work / "template_runs"), "mlflow": False}}
    return train(config_from_dict(recipe), progress=False)


def make_runs(template: Path, root: Path, n: int, seed: int = 0) -> Path:
    """``n`` run directories under ``root/grid/runs`` perturbed from ``template``, plus 3 broken ones."""
    rng = np.random.default_rng(seed)
    config = yaml.safe_load((template / "config.yaml").read_text())
    metrics = json.loads((template / "metrics.json").read_text())
    runs = root / "grid" / "runs"
    for k in range(n):
        task, arch = TASKS[k % 5], ARCHS[(k // 5) % 5]
        size, run_seed, loss = RESOLUTIONS[(k // 25) % 5], (k // 125) % 5, LOSSES[(k // 625) % 2]
        name = f"{task.lower().replace(' ', '_')}-{arch}-{size}px-s{run_seed}" + (f"-{k}" if k >= 625 else "")
        run = runs / name
        run.mkdir(parents=True)
        for file in SMALL:
            if (template / file).is_file():
                os.link(template / file, run / file)
        for split in ("valid", "test"):
            if (template / f"curves_{split}").is_dir():
                shutil.copytree(template / f"curves_{split}", run / f"curves_{split}", copy_function=os.link)
        cfg = json.loads(json.dumps(config))
        cfg.update(name=name, seed=run_seed)
        cfg["data"].update(size=size, tasks=[task])
        cfg["model"]["arch"] = arch
        cfg["train"]["loss"] = loss.split("→")[0]
        (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        scores = json.loads(json.dumps(metrics))
        for split in ("valid", "test"):
            auc = float(np.clip(0.75 + size / 4000 + rng.normal(0, 0.02), 0, 1))
            report = next(iter(scores[split]["tasks"].values()))
            scores[split]["tasks"] = {task: {**report, "auroc": auc, "auroc_ci_low": auc - 0.04,
                                             "auroc_ci_high": min(auc + 0.04, 1.0)}}
            scores[split]["mean_auroc"] = auc
        scores["tasks"] = [task]
        (run / "metrics.json").write_text(json.dumps(scores))
        (run / "status.json").write_text(json.dumps({"state": "finished", "time": 1.7e9 + k * 60.0}))
    broken = root / "broken"
    for name, files in {"truncated": {"config.yaml": "name: x\n", "metrics.json": '{"valid": {"tasks": {'},
                        "bad_yaml": {"config.yaml": "name: [", "status.json": "{}"},
                        "running": {"config.yaml": "name: y\n", "status.json": '{"state": "running"}'}}.items():
        (broken / name).mkdir(parents=True)
        for file, text in files.items():
            (broken / name / file).write_text(text)
    return root


APPTEST = """
import sys, time
t0 = time.perf_counter()
from streamlit.testing.v1 import AppTest
from cxrlab.dashboard import APP_PATH
t1 = time.perf_counter()
at = AppTest.from_file(str(APP_PATH), default_timeout=300).run()
t2 = time.perf_counter()
assert not at.exception, at.exception
assert at.title[0].value == "Runs" and len(at.get("plotly_chart")) == 1
at.run()
t3 = time.perf_counter()
print(f"RESULT {t1 - t0:.3f} {t2 - t1:.3f} {t3 - t2:.3f} {len(at.dataframe[0].value)}")
"""


def time_apptest(root: Path, work: Path) -> dict[str, float]:
    """The Runs page in AppTest in a fresh process with no saved index (a cold scan)."""
    env = {**os.environ, "CXRLAB_DASHBOARD_RUNS": str(root), "CXRLAB_CACHE_DIR": str(work / "apptest-cache")}
    out = subprocess.run([sys.executable, "-c", APPTEST], capture_output=True, text=True, env=env, check=True)
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT"))
    imports, first, second, rows = line.split()[1:]
    return {"streamlit import": float(imports), "Runs page first run": float(first),
            "Runs page rerun": float(second), "table rows": float(rows)}


BASELINE_APP = """
import plotly.graph_objects as go
import streamlit as st
st.title("Baseline")
st.dataframe({"a": [1, 2, 3]})
st.plotly_chart(go.Figure(go.Scatter(x=[1, 2], y=[3, 4])))
"""


def _serve(command: list[str], port: int, env: dict[str, str] | None = None) -> subprocess.Popen:
    import urllib.request

    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                              env=env)
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1) as response:
                if response.read().strip() == b"ok":
                    return server
        except OSError:
            time.sleep(0.2)
    server.terminate()
    raise RuntimeError(f"no server on port {port}")


def _open_times(url: str, label: str) -> dict[str, float]:
    """Seconds from ``driver.get`` to the first table and to the first drawn Plotly chart: in two
    fresh browser profiles (nothing cached), the second one then opening the page once more
    (Streamlit's JavaScript in the browser cache, as for a user coming back to the dashboard)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    times = {}
    for attempt in ("first open", "second open"):
        profile = tempfile.mkdtemp()
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1440,1600"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            visits = ("",) if attempt == "first open" else ("", " then reopened (browser cache warm)")
            for visit in visits:
                driver.get("about:blank")
                started = time.perf_counter()
                driver.get(url)
                table = chart = None
                while (table is None or chart is None) and time.perf_counter() - started < 180:
                    if table is None and driver.find_elements(By.CSS_SELECTOR, '[data-testid="stDataFrame"]'):
                        table = time.perf_counter() - started
                    if chart is None and driver.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .main-svg"):
                        chart = time.perf_counter() - started
                    time.sleep(0.02)
                times[f"{label}: {attempt}{visit}, table shown"] = table or float("nan")
                times[f"{label}: {attempt}{visit}, chart drawn"] = chart or float("nan")
        finally:
            driver.quit()
            shutil.rmtree(profile, ignore_errors=True)
    return times


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def time_browser(root: Path, work: Path) -> dict[str, float]:
    """The Runs page served by ``cxrlab dashboard`` in headless Chromium, next to a one-table,
    one-chart Streamlit page (the floor set by Streamlit and Plotly on this machine)."""
    launch = ("import sys, typer\nfrom cxrlab.cli.dashboard import register\napp = typer.Typer()\n"
              "@app.callback()\ndef main() -> None:\n    pass\nregister(app)\napp(sys.argv[1:])\n")
    results: dict[str, float] = {}
    baseline = work / "baseline_app.py"
    baseline.write_text(BASELINE_APP)
    port = _free_port()
    server = _serve([sys.executable, "-m", "streamlit", "run", str(baseline), "--server.port", str(port),
                     "--server.headless", "true", "--browser.gatherUsageStats", "false"], port)
    try:
        results.update(_open_times(f"http://127.0.0.1:{port}", "baseline page"))
    finally:
        server.terminate()
        server.wait(timeout=20)
    port = _free_port()
    env = {**os.environ, "CXRLAB_CACHE_DIR": str(work / "index-cache")}
    started = time.perf_counter()
    server = _serve([sys.executable, "-c", launch, "dashboard", "--runs", str(root), "--port", str(port)], port, env)
    results["cxrlab dashboard start (index + server)"] = time.perf_counter() - started
    try:
        results.update(_open_times(f"http://127.0.0.1:{port}", "Runs page"))
    finally:
        server.terminate()
        server.wait(timeout=20)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=600, help="Run directories to make.")
    parser.add_argument("--template", type=Path, default=None, help="A finished classification run to copy.")
    parser.add_argument("--out", type=Path, default=None, help="Where to make them (default: a temporary folder).")
    parser.add_argument("--browser", action="store_true", help="Also time the page in headless Chromium.")
    args = parser.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="cxrlab-bench-dashboard-"))
    template = args.template or train_template(work / "template")
    root = work / "runs"
    if root.exists():
        shutil.rmtree(root)
    started = time.perf_counter()
    make_runs(template, root, args.runs)
    print(f"made {args.runs} run directories (+3 broken) under {root} in {time.perf_counter() - started:.1f} s; "
          f"{os.cpu_count()} CPU cores")

    from cxrlab.dashboard.index import RunIndex

    index = RunIndex(root)
    started = time.perf_counter()
    records = index.refresh()
    cold = time.perf_counter() - started
    started = time.perf_counter()
    index.refresh()
    warm = time.perf_counter() - started
    timings = {"index cold": cold, "index warm": warm, **time_apptest(root, work)}
    if args.browser:
        timings.update(time_browser(root, work))
    print(f"{len(records)} records ({sum(r.state == 'unreadable' for r in records)} unreadable)")
    for name, value in timings.items():
        print(f"  {name:<72} {value:8.3f}" + ("" if name == "table rows" else " s"))
    if args.out is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
