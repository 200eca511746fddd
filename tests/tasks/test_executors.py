"""Executors: inline, local process pool (GPU slots) and a local 2-CPU Ray instance."""

from __future__ import annotations

import math
import os

import pytest

from cxrlab.errors import ConfigError
from cxrlab.engine.executors import InlineExecutor, LocalExecutor, RayExecutor, create_executor
from cxrlab.tasks.scaling.plan import slug


def _collect(events):
    kinds: dict[str, list[str]] = {"started": [], "finished": [], "failed": []}
    results, errors = {}, {}
    for event in events:
        kinds[event.kind].append(event.key)
        if event.kind == "finished":
            results[event.key] = event.result
        elif event.kind == "failed":
            errors[event.key] = event.error
    return kinds, results, errors


def test_inline_executor_reports_each_item_and_keeps_going_after_a_failure():
    kinds, results, errors = _collect(InlineExecutor().run(math.sqrt, [("a", 4.0), ("b", -1.0), ("c", 9.0)]))
    assert kinds["started"] == ["a", "b", "c"]
    assert results == {"a": 2.0, "c": 3.0}
    assert errors == {"b": "ValueError: math domain error"}


def test_local_pool_gives_each_parallel_run_its_own_gpu():
    with LocalExecutor(max_parallel=2, gpus=["7", "9"]) as pool:
        items = [(f"run{k}", "CUDA_VISIBLE_DEVICES") for k in range(3)]
        kinds, results, errors = _collect(pool.run(os.getenv, items))
        assert not errors and sorted(kinds["finished"]) == ["run0", "run1", "run2"]
        assert results["run0"] == "7" and results["run1"] == "9" and results["run2"] in {"7", "9"}
        threads = dict(_collect(pool.run(os.getenv, [("t", "OMP_NUM_THREADS")]))[1])
    assert threads["t"] == str(pool.threads_per_run) == str(max(1, (os.cpu_count() or 1) // 2))


def test_local_pool_sends_worker_output_to_a_log_file(tmp_path):
    with LocalExecutor(max_parallel=1, log_dir=tmp_path / "logs") as pool:
        kinds, _, errors = _collect(pool.run(print, [("run-a", "hello from the worker")]))
    assert kinds["finished"] == ["run-a"] and not errors
    assert (tmp_path / "logs" / "run-a.log").read_text() == "hello from the worker\n"


def test_local_pool_survives_a_worker_that_dies():
    with LocalExecutor(max_parallel=1) as pool:
        _, _, errors = _collect(pool.run(os._exit, [("killed", 3)]))     # the process vanishes
        assert errors["killed"].startswith("BrokenProcessPool")
        kinds, results, errors = _collect(pool.run(os.getenv, [("next", "PATH")]))
    assert not errors and results["next"] == os.environ["PATH"]


def test_create_executor_checks_its_arguments():
    assert isinstance(create_executor("inline"), InlineExecutor)
    with pytest.raises(ConfigError, match="unknown executor"):
        create_executor("slurm")
    with pytest.raises(ConfigError, match="--ray-address"):
        create_executor("local", ray_address="auto")
    with pytest.raises(ConfigError, match="at least 1"):
        LocalExecutor(max_parallel=0)


def test_ray_executor_on_a_local_two_cpu_instance():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray instance is already running in this process")
    executor = RayExecutor(local_num_cpus=2, num_cpus_per_run=1)
    try:
        assert executor.max_parallel == 2 and executor.resources["CPU"] == 2
        assert "local Ray instance" in executor.describe()
        kinds, results, errors = _collect(executor.run(slug, [("a", "Pleural Effusion"), ("b", "No Finding")]))
        assert results == {"a": "pleural_effusion", "b": "no_finding"} and not errors
        kinds, results, errors = _collect(executor.run(math.sqrt, [("bad", -1.0), ("good", 16.0)]))
        assert results == {"good": 4.0} and errors["bad"].startswith("ValueError")
        assert sorted(kinds["started"]) == ["bad", "good"]
    finally:
        executor.close()
    assert not ray.is_initialized()                # the instance it started is shut down
