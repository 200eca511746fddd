"""The persistent outbox: kill -9 of `cxrlab serve` loses no result; concurrent pushes lose none and send each once."""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

pytest.importorskip("pynetdicom")

from cxrlab.serve.app import create_app  # noqa: E402

from .conftest import AUTH, free_port  # noqa: E402

LOAD_INSTANCES = 8


def test_kill_9_with_results_in_the_outbox_loses_none(start_server, start_storescp, dicom_tool, serve_checkpoint,
                                                      rg1_dir, tmp_path):
    destination = free_port()
    args = ["--classifier", str(serve_checkpoint), "--db", str(tmp_path / "w.sqlite"), "--dicom-port",
            str(free_port()), "--ae-title", "CXRLAB", "--forward", f"STORESCP@127.0.0.1:{destination}",
            "--forward-retry-max", "0.5"]
    server = start_server(args, "first.log")
    server.wait_ready()
    dicom_port = args[args.index("--dicom-port") + 1]
    store = subprocess.run([dicom_tool("storescu"), "-aec", "CXRLAB", "127.0.0.1", dicom_port,
                            str(rg1_dir / "RG1_UNCR.dcm")], capture_output=True, text=True, timeout=120)
    assert store.returncode == 0, store.stdout + store.stderr
    outbox = httpx.get(f"{server.base}/v1/outbox", headers=AUTH, timeout=10).json()
    assert outbox["pending"] == 2, outbox             # stored before the C-STORE was answered
    server.kill()
    scp = start_storescp(destination)
    again = start_server(args, "second.log")
    again.wait_ready()
    files = scp.wait_for(2)
    assert sorted(pydicom.dcmread(f).Modality for f in files) == ["OT", "SR"]
    assert httpx.get(f"{again.base}/v1/outbox", headers=AUTH, timeout=10).json()["pending"] == 0


@pytest.fixture(scope="module")
def small_instances(rg1_dir, tmp_path_factory) -> list:
    """RG1_UNCR's header on 256 px crops of its pixels, each with its own SOP Instance UID (no repeats)."""
    source = pydicom.dcmread(rg1_dir / "RG1_UNCR.dcm")
    pixels = source.pixel_array
    out = tmp_path_factory.mktemp("load")
    paths = []
    for i in range(LOAD_INSTANCES):
        ds = pydicom.dcmread(rg1_dir / "RG1_UNCR.dcm", stop_before_pixels=True)
        crop = np.ascontiguousarray(pixels[600 + 40 * i:856 + 40 * i, 700:956])
        ds.Rows, ds.Columns = crop.shape
        ds.PixelData = crop.astype(pixels.dtype).tobytes()
        ds["PixelData"].VR = "OW"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        paths.append(out / f"load_{i}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def test_concurrent_pushes_lose_none_and_deliver_once(make_settings, model_set, start_storescp, dicom_tool,
                                                     small_instances, auth):
    scp = start_storescp()
    settings = make_settings(dicom_port=free_port(), forward=(f"STORESCP@127.0.0.1:{scp.port}",),
                             forward_retry_initial_s=0.2, forward_retry_max_s=0.5)
    app = create_app(settings, models=model_set)
    with TestClient(app) as client:
        started = time.perf_counter()

        def push(path):
            return subprocess.run([dicom_tool("storescu"), "-aec", "CXRLAB", "127.0.0.1", str(settings.dicom_port),
                                   str(path)], capture_output=True, text=True, timeout=120)

        with ThreadPoolExecutor(LOAD_INSTANCES) as pool:
            runs = list(pool.map(push, small_instances))
        accepted = time.perf_counter() - started
        assert [r.returncode for r in runs] == [0] * LOAD_INSTANCES, [r.stderr for r in runs if r.returncode]
        files = scp.wait_for(2 * LOAD_INSTANCES)
        delivered = time.perf_counter() - started
        time.sleep(1.0)
        files = scp.files()
        received = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        assert len(received) == 2 * LOAD_INSTANCES                       # zero lost, none twice
        assert len({ds.SOPInstanceUID for ds in received}) == 2 * LOAD_INSTANCES
        assert client.get("/v1/worklist", headers=auth).json()["total"] == LOAD_INSTANCES
        print(f"load: {LOAD_INSTANCES} instances accepted in {accepted:.1f} s, "
              f"{len(received)} results delivered after {delivered:.1f} s")
