"""Batched serving: the batcher routes every result to its own request, forms batches under
concurrency, answers a lone request within the wait bound, isolates a failing item and
drains on shutdown; the service gives the same findings with and without batching."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cxrlab.errors import ConfigError, InputError
from cxrlab.serve.app import create_app
from cxrlab.serve.batching import Batcher, BatcherClosedError


class EchoModel:
    """A fake predictor whose output encodes its input: ``item -> (item * 10 + 1, batch size)``.

    Negative items make the whole call fail (like a batch holding one image the model
    cannot take); ``delay`` seconds per call stand for the network.
    """

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: list[list[int]] = []
        self.lock = threading.Lock()

    def __call__(self, items: list[int]) -> list[tuple[int, int]]:
        with self.lock:
            self.calls.append(list(items))
        time.sleep(self.delay)
        bad = [item for item in items if item < 0]
        if bad:
            raise InputError(f"item{bad[0]}.png", "the fake model refuses negative items")
        return [(item * 10 + 1, len(items)) for item in items]


def test_concurrent_results_are_never_mixed_up_and_batches_form():
    model = EchoModel(delay=0.01)
    batcher = Batcher(model, max_batch=8, wait_s=0.05)
    try:
        def client(k: int) -> list[tuple[int, tuple[int, int]]]:
            return [(i, batcher(i)) for i in range(k, 96, 12)]

        with ThreadPoolExecutor(12) as pool:
            answers = [a for part in pool.map(client, range(12)) for a in part]
    finally:
        batcher.close()
    assert sorted(i for i, _ in answers) == list(range(96))
    assert all(result == i * 10 + 1 for i, (result, _) in answers)
    assert max(len(call) for call in model.calls) > 1, "no batch of more than one image formed"
    assert all(len(call) <= 8 for call in model.calls)
    stats = batcher.stats()
    assert stats["images"] == 96 and stats["batches"] == len(model.calls)
    assert max(int(size) for size in stats["batch_sizes"]) > 1 and stats["mean_batch"] > 1
    assert stats["queue_wait_ms"]["max"] >= 0


def test_a_lone_request_is_answered_within_the_wait_bound():
    wait = 0.1
    batcher = Batcher(EchoModel(), max_batch=8, wait_s=wait)
    try:
        started = time.monotonic()
        assert batcher(7) == (71, 1)
        elapsed = time.monotonic() - started
    finally:
        batcher.close()
    assert wait <= elapsed < wait + 1.0        # held back for batch-mates, then answered (margin for a busy CI)


def test_a_full_batch_does_not_wait_for_the_bound():
    batcher = Batcher(EchoModel(), max_batch=2, wait_s=30.0)
    try:
        started = time.monotonic()
        futures = [batcher.submit(1), batcher.submit(2)]
        assert [f.result(timeout=10) for f in futures] == [(11, 2), (21, 2)]
        assert time.monotonic() - started < 10
    finally:
        batcher.close()


def test_one_bad_item_does_not_fail_its_batch_mates():
    model = EchoModel()
    batcher = Batcher(model, max_batch=4, wait_s=0.5)
    try:
        futures = [batcher.submit(item) for item in (1, 2, -3, 4)]
        with pytest.raises(InputError, match="item-3.png"):
            futures[2].result(timeout=30)
        assert [futures[i].result(timeout=30) for i in (0, 1, 3)] == [(11, 1), (21, 1), (41, 1)]
    finally:
        batcher.close()
    assert model.calls[0] == [1, 2, -3, 4], "the four items were not tried as one batch"
    assert sorted(map(tuple, model.calls[1:])) == [(-3,), (1,), (2,), (4,)]
    assert batcher.stats()["isolated_retries"] == 1


def test_close_drains_the_queue_then_refuses():
    model = EchoModel(delay=0.02)
    batcher = Batcher(model, max_batch=3, wait_s=0.01)
    futures = [batcher.submit(i) for i in range(10)]
    batcher.close()
    assert [f.result(timeout=0)[0] for f in futures] == [i * 10 + 1 for i in range(10)]
    with pytest.raises(BatcherClosedError):
        batcher.submit(11)


class Panic(BaseException):
    """Like pyo3's PanicException: not an Exception, so ``except Exception`` misses it."""


def test_a_panic_fails_its_batch_and_the_waiting_items_instead_of_hanging(monkeypatch):
    seen = []
    monkeypatch.setattr(threading, "excepthook", seen.append)
    release = threading.Event()

    def run_batch(items: list[int]) -> list[int]:
        release.wait(10)
        if 13 in items:
            raise Panic("native code panicked")
        return items

    batcher = Batcher(run_batch, max_batch=1, wait_s=0.0)
    first, second = batcher.submit(13), batcher.submit(14)
    release.set()
    with pytest.raises(Panic):
        first.result(timeout=30)
    with pytest.raises(BatcherClosedError):
        second.result(timeout=30)
    with pytest.raises(BatcherClosedError):
        batcher.submit(15)
    batcher.close(timeout=30)
    assert [type(args.exc_value) for args in seen] == [Panic]


def test_bad_batch_settings_are_refused(make_settings):
    with pytest.raises(ConfigError, match="max_batch"):
        Batcher(EchoModel(), max_batch=0, wait_s=0.01)
    with pytest.raises(ConfigError, match="--max-batch"):
        make_settings(max_batch=0).check()
    with pytest.raises(ConfigError, match="--batch-wait-ms"):
        make_settings(max_batch=4, batch_wait_ms=-1).check()
    with pytest.raises(ConfigError, match="did you mean 'onnx'"):
        make_settings(backend="onx").check()


def _findings(body: dict) -> list[tuple[str, float, bool]]:
    return [(f["label"], f["probability"], f["positive"]) for f in body["findings"]]


def test_service_batched_gives_the_findings_of_one_at_a_time(make_settings, model_set, phantom_images, tmp_path,
                                                              auth):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(phantom_images[0].read_bytes()[:200])
    uploads = [*phantom_images, corrupt] * 2

    def post_all(settings) -> tuple[list, dict]:
        with TestClient(create_app(settings, models=model_set)) as client:
            def post(path):
                response = client.post("/v1/studies", headers=auth,
                                       files={"file": (path.name, path.read_bytes(), "application/octet-stream")})
                return response.status_code, response.json()

            with ThreadPoolExecutor(len(uploads)) as pool:
                answers = list(pool.map(post, uploads))
            return answers, client.get("/healthz").json()

    alone, health_alone = post_all(make_settings(db=tmp_path / "alone.sqlite"))
    batched, health = post_all(make_settings(db=tmp_path / "batched.sqlite", max_batch=4, batch_wait_ms=200))
    assert health_alone["batching"] is None
    for path, (code_a, body_a), (code_b, body_b) in zip(uploads, alone, batched):
        if path == corrupt:
            assert code_a == code_b == 422 and body_a == body_b
            continue
        assert code_a == code_b == 200
        assert [name for name, _, _ in _findings(body_b)] == [name for name, _, _ in _findings(body_a)]
        np.testing.assert_allclose([p for _, p, _ in _findings(body_b)], [p for _, p, _ in _findings(body_a)],
                                   atol=1e-5)
        assert [d for _, _, d in _findings(body_b)] == [d for _, _, d in _findings(body_a)]
        assert body_b["heatmap"]["label"] == body_a["heatmap"]["label"]
        assert body_b["heatmap"]["probability"] == pytest.approx(body_a["heatmap"]["probability"], abs=1e-5)
        assert body_b["priority"]["group"] == body_a["priority"]["group"]
    stats = health["batching"]
    assert stats["max_batch"] == 4 and stats["images"] == len(phantom_images) * 2
    assert max(int(size) for size in stats["batch_sizes"]) > 1, stats


def test_model_set_batch_equals_one_at_a_time(model_set, phantom_images):
    """One batched call (probabilities, Grad-CAM of each image's own target) gives each image's
    one-at-a-time analysis."""
    from cxrlab.explain.cam import heatmap, heatmaps

    paths = phantom_images[:4]
    items = [model_set.prepare(path) for path in paths]
    batched = model_set.analyze_batch(items)
    for path, got in zip(paths, batched):
        want = model_set.analyze(path)
        np.testing.assert_allclose([f["probability"] for f in got.findings],
                                   [f["probability"] for f in want.findings], atol=1e-5)
        assert got.image == want.image
        assert {**got.heatmap, "probability": None} == {**want.heatmap, "probability": None}
        assert got.heatmap["probability"] == pytest.approx(want.heatmap["probability"], abs=1e-5)
    model = model_set.classifier.model
    inputs = [item.classifier_input for item in items[:3]]
    maps = heatmaps(model, inputs, [0, 2, 1], "gradcam", model_set.classifier.labels)
    for image, target, got in zip(inputs, (0, 2, 1), maps):
        want = heatmap(model, image, target, "gradcam", model_set.classifier.labels)
        assert got.label == want.label and got.probability == pytest.approx(want.probability, abs=1e-6)
        np.testing.assert_allclose(got.map, want.map, atol=1e-5)
        assert got.map.std() > 0, "a flat map would compare equal trivially"


def test_cli_passes_the_batching_options(serve_checkpoint, tmp_path, monkeypatch):
    import typer
    from typer.testing import CliRunner

    import cxrlab.serve.app
    from cxrlab.cli.serve import register

    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Test app."""

    register(app)
    captured = []

    def fake_create_app(settings):
        captured.append(settings)
        raise ConfigError("test", "stopped before loading the models")

    monkeypatch.setattr(cxrlab.serve.app, "create_app", fake_create_app)
    runner, env = CliRunner(), {"CXRLAB_API_TOKEN": "a-long-enough-token"}
    base = ["serve", "--classifier", str(serve_checkpoint), "--db", str(tmp_path / "w.sqlite")]
    runner.invoke(app, [*base, "--max-batch", "4", "--batch-wait-ms", "25"], env=env)
    runner.invoke(app, base, env=env)
    assert [(s.max_batch, s.batch_wait_ms, s.backend) for s in captured] == [(4, 25.0, "torch"), (8, 10.0, "torch")]
    refused = runner.invoke(app, [*base, "--backend", "onx"], env=env)
    assert refused.exit_code == 2 and "did you mean 'onnx'" in refused.output
    assert runner.invoke(app, [*base, "--max-batch", "0"], env=env).exit_code == 2
    assert len(captured) == 2


def test_service_backends_are_the_inference_layers():
    from cxrlab.inference.backends import BACKENDS
    from cxrlab.serve.settings import BACKENDS as SERVE_BACKENDS

    assert SERVE_BACKENDS == BACKENDS
