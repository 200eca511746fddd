"""A bounded load test on 127.0.0.1, and GETs answered while inference is busy."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import uvicorn

from cxrlab.serve.app import create_app


class LiveServer:
    """uvicorn serving an app in a thread on 127.0.0.1 (a free port)."""

    def __init__(self, app) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


class BlockingModels:
    """The real models, but each analysis waits until released (inference made 'slow')."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.entered = threading.Event()
        self.release = threading.Event()

    def versions(self):
        return self.inner.versions()

    def analyze(self, path, image=None):
        self.entered.set()
        if not self.release.wait(120):
            raise TimeoutError("never released")
        return self.inner.analyze(path, image)


def test_get_endpoints_answer_while_inference_runs(make_settings, model_set, phantom_images, auth):
    models = BlockingModels(model_set)
    app = create_app(make_settings(), models=models)
    with LiveServer(app) as base:
        result = {}

        def post() -> None:
            with httpx.Client(base_url=base, headers=auth, timeout=120) as http:
                result["upload"] = http.post("/v1/studies", files={"file": ("a.png", phantom_images[0].read_bytes())})

        uploader = threading.Thread(target=post)
        uploader.start()
        try:
            assert models.entered.wait(60), "the upload never reached the models"
            with httpx.Client(base_url=base, headers=auth, timeout=10) as http:
                started = time.perf_counter()
                assert http.get("/v1/worklist").json()["total"] == 0
                assert http.get("/healthz").status_code == 200
                waited = time.perf_counter() - started
            assert uploader.is_alive(), "the upload finished before the models were released"
        finally:
            models.release.set()
            uploader.join(timeout=120)
        assert result["upload"].status_code == 200
        assert waited < 10


@pytest.mark.slow
def test_bounded_load_no_errors(make_settings, model_set, phantom_images, auth):
    uploads, clients = 40, 4
    app = create_app(make_settings(), models=model_set)
    payloads = [(p.name, p.read_bytes()) for p in phantom_images]
    with LiveServer(app) as base:
        def client_run(k: int) -> list[tuple[int, float]]:
            done = []
            with httpx.Client(base_url=base, headers=auth, timeout=120) as http:
                for i in range(k, uploads, clients):
                    name, data = payloads[i % len(payloads)]
                    started = time.perf_counter()
                    response = http.post("/v1/studies", files={"file": (name, data)})
                    done.append((response.status_code, time.perf_counter() - started))
            return done

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = [r for part in pool.map(client_run, range(clients)) for r in part]
        wall = time.perf_counter() - started
        with httpx.Client(base_url=base, headers=auth, timeout=30) as http:
            listing = http.get("/v1/worklist", params={"limit": 1000}).json()
    codes = [code for code, _ in results]
    latencies = np.array([seconds for _, seconds in results]) * 1000
    errors = sum(code != 200 for code in codes)
    print(f"\nload: {uploads} uploads, {clients} clients, errors {errors}, p50 {np.percentile(latencies, 50):.0f} ms, "
          f"p99 {np.percentile(latencies, 99):.0f} ms, {uploads / wall:.1f} images/s")
    assert len(codes) == uploads and errors == 0
    assert listing["total"] == uploads and len({item["study_id"] for item in listing["items"]}) == uploads
    ranks = [item["priority"]["rank"] for item in listing["items"]]
    assert ranks == sorted(ranks)


def test_real_server_refuses_an_oversized_upload(make_settings, model_set, auth):
    app = create_app(make_settings(max_upload_bytes=100_000), models=model_set)
    with LiveServer(app) as base, httpx.Client(base_url=base, headers=auth, timeout=60) as http:
        response = http.post("/v1/studies", files={"file": ("big.dcm", b"\0" * 300_000)})
        assert response.status_code == 413
        assert response.json()["detail"] == "upload larger than the limit of 100000 bytes"
        assert http.get("/v1/worklist").json()["total"] == 0
