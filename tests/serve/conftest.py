"""Fixtures of the inference-service tests: tiny classifier checkpoints, phantom images, settings."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LABELS = ("Cardiomegaly", "Pleural Effusion", "Pneumothorax")
SIZE = 48

# A fresh Typer app with only `serve` registered (the lead wires it into cxrlab.cli.main).
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


def _thresholds(**values: float) -> dict[str, float]:
    return {label: float(values.get(label.replace(" ", "_"), 0.5)) for label in LABELS}


@pytest.fixture(scope="session")
def serve_models_dir(tmp_path_factory) -> Path:
    """Checkpoints of one untrained resnet10t (1 channel, 48 px) that differ only in thresholds.

    ``clf.pt``: 0.5 everywhere. ``clf_none.pt``: nothing can be positive.
    ``clf_critical.pt``: Pneumothorax always positive. ``clf_abnormal.pt``: Cardiomegaly always positive.
    """
    import torch

    from cxrlab.data.transforms import PreprocessConfig
    from cxrlab.models import create_classifier
    from cxrlab.models.weights import save_model_checkpoint

    torch.manual_seed(0)
    model = create_classifier("resnet10t", num_classes=len(LABELS), in_chans=1, pretrained=None, dropout=0.1)
    out = tmp_path_factory.mktemp("serve_models")
    meta = {"labels": list(LABELS), "input_size": SIZE, "preprocessing": PreprocessConfig(size=SIZE).to_dict(),
            "normalization": "unit", "run_name": "tiny-serve"}
    never = 1.0 + 1e-6
    variants = {
        "clf.pt": _thresholds(),
        "clf_none.pt": {label: never for label in LABELS},
        "clf_critical.pt": {**{label: never for label in LABELS}, "Pneumothorax": 0.0},
        "clf_abnormal.pt": {**{label: never for label in LABELS}, "Cardiomegaly": 0.0},
    }
    for name, thresholds in variants.items():
        save_model_checkpoint(out / name, model, {**meta, "thresholds": thresholds})
    return out


@pytest.fixture(scope="session")
def serve_checkpoint(serve_models_dir) -> Path:
    return serve_models_dir / "clf.pt"


@pytest.fixture(scope="session")
def model_set(serve_checkpoint):
    """The models of ``clf.pt``, loaded once for every in-process app."""
    from cxrlab.serve.models import ModelSet

    return ModelSet(serve_checkpoint)


@pytest.fixture(scope="session")
def phantom_images(tmp_path_factory) -> list[Path]:
    """Five 96 px phantom PNGs and one JPEG (synthetic, no patient data)."""
    import cv2

    from cxrlab.data.synthetic import generate_phantom

    out = tmp_path_factory.mktemp("serve_phantoms")
    findings = [(), ("pneumothorax",), ("cardiomegaly",), ("effusion",), ("nodule",), ()]
    paths = []
    for i, names in enumerate(findings):
        image = generate_phantom(np.random.default_rng(100 + i), 96, names).image
        path = out / (f"phantom_{i}.jpg" if i == len(findings) - 1 else f"phantom_{i}.png")
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


@pytest.fixture
def make_settings(tmp_path, serve_checkpoint):
    """``make_settings(**fields)`` -> ServeSettings on a fresh database in ``tmp_path``."""
    from cxrlab.serve.settings import ServeSettings

    def build(**values):
        values.setdefault("classifier", serve_checkpoint)
        values.setdefault("db", tmp_path / "worklist.sqlite")
        values.setdefault("api_token", TOKEN)
        values.setdefault("uid_salt", b"0123456789abcdef0123456789abcdef")
        values.setdefault("inference_workers", 2)
        values.setdefault("decode_workers", 0)  # in-process: tests/serve/test_fuzz_uploads.py runs the children
        return ServeSettings(**values)

    return build


@pytest.fixture
def client(make_settings, model_set):
    """A TestClient of a fresh app (shared models, fresh database)."""
    from fastapi.testclient import TestClient

    from cxrlab.serve.app import create_app

    app = create_app(make_settings(), models=model_set)
    with TestClient(app) as test_client:
        yield test_client


def _upload(client, path: Path, headers: dict | None = AUTH):
    """POST one file to /v1/studies."""
    return client.post("/v1/studies", files={"file": (path.name, path.read_bytes(), "application/octet-stream")},
                       headers=headers)


@pytest.fixture(scope="session")
def upload():
    """``upload(client, path, headers=AUTH)``: POST one file to /v1/studies."""
    return _upload


@pytest.fixture(scope="session")
def auth() -> dict[str, str]:
    """The Authorization header of the test token."""
    return dict(AUTH)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``cxrlab serve`` in a child process, its output collected in a file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.log_path = log_path
        self.port = int(args[args.index("--port") + 1])
        self.base = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-c", SERVE_CLI, "serve", *args], stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 240.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.output()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs."""
        self.proc.kill()
        self.proc.wait(timeout=30)
        self._log.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")


def server_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CXRLAB_API_TOKEN", "CXRLAB_UID_SALT")}
    env.update({"PYTHONUNBUFFERED": "1", **extra})
    return env


@pytest.fixture
def start_server(tmp_path):
    """``start_server(args, log_name) -> ServerProcess`` (token set); every server is stopped at teardown."""
    started: list[ServerProcess] = []

    def start(args: list[str], log_name: str = "server.log", **env: str) -> ServerProcess:
        if "--port" not in args:
            args = [*args, "--port", str(free_port())]
        server = ServerProcess(args, tmp_path / log_name, server_env(CXRLAB_API_TOKEN=TOKEN, **env))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# --------------------------------------------------------------------------- DICOM node (issue 14)

DICOM_TOOLS = {"storescu": "/usr/bin/storescu", "storescp": "/usr/bin/storescp", "echoscu": "/usr/bin/echoscu",
               "dsrdump": "/usr/bin/dsrdump", "dciodvfy": "/usr/bin/dciodvfy", "Orthanc": "/usr/sbin/Orthanc"}
"""Debian's DCMTK, dicom3tools and Orthanc by absolute path: the virtualenv's bin/ holds
pynetdicom's Python `storescu`/`storescp`, which must not be taken for DCMTK's."""


@pytest.fixture(scope="session")
def dicom_tool():
    """``dicom_tool(name) -> path`` of a Debian DICOM program; skips (with the reason) when missing."""

    def find(name: str) -> str:
        path = DICOM_TOOLS[name]
        if not os.access(path, os.X_OK):
            pytest.skip(f"{path} is not installed (bash scripts/ensure_dicom_tools.sh installs dcmtk, "
                        "dicom3tools and orthanc)")
        return path

    return find


class StoreSCP:
    """DCMTK's ``storescp`` on a loopback port, every received object in its own file (``+uf``)."""

    def __init__(self, binary: str, folder: Path, port: int, ae_title: str = "STORESCP") -> None:
        self.folder, self.port, self.ae_title = folder, port, ae_title
        folder.mkdir(parents=True, exist_ok=True)
        self._log = open(folder.parent / f"storescp-{port}.log", "ab")
        self.proc = subprocess.Popen([binary, "-aet", ae_title, "-od", str(folder), "+uf", str(port)],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        time.sleep(0.3)

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def wait_for(self, count: int, timeout: float = 60.0) -> list[Path]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.files()) < count:
            time.sleep(0.1)
        time.sleep(0.3)
        return self.files()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture
def start_storescp(tmp_path, dicom_tool):
    """``start_storescp(port=None, name="recv") -> StoreSCP``; stopped at teardown."""
    started: list[StoreSCP] = []

    def start(port: int | None = None, name: str = "recv") -> StoreSCP:
        scp = StoreSCP(dicom_tool("storescp"), tmp_path / name, port or free_port())
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.stop()
