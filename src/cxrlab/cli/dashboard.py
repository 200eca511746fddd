"""``cxrlab dashboard``: the evaluation dashboard (Streamlit) over a run root."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import typer
from rich.console import Console

from cxrlab.cli.errors import require_extra, user_errors

console = Console()


def streamlit_command(runs: Path, host: str, port: int) -> list[str]:
    """The ``streamlit run`` command line that serves the dashboard of ``runs``."""
    from cxrlab.dashboard import APP_PATH

    return [sys.executable, "-m", "streamlit", "run", str(APP_PATH),
            "--server.address", host, "--server.port", str(port), "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--client.toolbarMode", "viewer",
            "--", "--runs", str(runs)]


def run_streamlit(cmd: list[str], env: dict[str, str]) -> int:
    """Run the Streamlit server until it exits; SIGTERM and Ctrl+C reach it, never orphan it."""
    child = subprocess.Popen(cmd, env=env)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
    try:
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:          # the terminal sent SIGINT to the server too
                child.send_signal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if child.poll() is None:
            child.kill()


def register(app: typer.Typer) -> None:
    """Add the top-level ``dashboard`` command to ``app``."""

    @app.command("dashboard")
    @user_errors
    def dashboard_cmd(
        runs: Path = typer.Option(Path("runs"), "--runs", help="Run root: the folder holding run directories "
                                                             "(searched a few levels deep)."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (keep 127.0.0.1 unless "
                                                            "the network is trusted: there is no login)."),
        port: int = typer.Option(8501, "--port", min=1, max=65535, help="Port to listen on."),
    ) -> None:
        """Compare runs, scaling studies, explanations, segmentations and screening reports in the browser."""
        require_extra("dashboard", "streamlit", "plotly")
        from cxrlab.dashboard.index import open_index
        from cxrlab.errors import MissingFileError

        if not runs.is_dir():
            raise MissingFileError(runs, "run root not found; train something first "
                                         "(e.g. `cxrlab demo --out runs/demo`)")
        root = runs.resolve()
        started = time.perf_counter()
        records = open_index(root).refresh()   # saved on disk: the app's first page starts from it
        bad = sum(not r.readable for r in records)
        console.print(f"indexed {len(records)} run directories under {root} in {time.perf_counter() - started:.1f} s"
                      + (f" ({bad} unreadable)" if bad else ""))
        console.print(f"cxrlab dashboard on [bold]http://{host}:{port}[/] (Ctrl+C stops it)")
        env = {**os.environ, "CXRLAB_DASHBOARD_RUNS": str(root)}
        code = run_streamlit(streamlit_command(root, host, port), env)
        raise typer.Exit(code=0 if code in (0, -signal.SIGINT, -signal.SIGTERM) else code)
