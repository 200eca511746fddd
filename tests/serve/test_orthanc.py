"""Orthanc as the PACS: it pushes a study to cxrlab, cxrlab files its SR and heatmap back in the same study."""

from __future__ import annotations

import json
import subprocess
import time

import httpx
import pytest
from fastapi.testclient import TestClient

pytest.importorskip("pynetdicom")

from cxrlab.serve.app import create_app  # noqa: E402

from .conftest import free_port  # noqa: E402

SR, SC, CR = "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.1"


@pytest.fixture
def orthanc(dicom_tool, tmp_path):
    """Orthanc with a temporary configuration and storage on free loopback ports (never a system service)."""
    binary = dicom_tool("Orthanc")
    http_port, dicom_port, cxrlab_port = free_port(), free_port(), free_port()
    config = {"Name": "cxrlab-test", "StorageDirectory": str(tmp_path / "orthanc-db"),
              "IndexDirectory": str(tmp_path / "orthanc-db"), "HttpPort": http_port, "DicomPort": dicom_port,
              "DicomAet": "ORTHANC", "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
              "HttpServerEnabled": True, "DicomServerEnabled": True, "Plugins": [], "DicomAlwaysAllowStore": True,
              "DicomCheckCalledAet": False, "DicomModalities": {"cxrlab": ["CXRLAB", "127.0.0.1", cxrlab_port]}}
    path = tmp_path / "orthanc.json"
    path.write_text(json.dumps(config))
    log = open(tmp_path / "orthanc.log", "ab")
    proc = subprocess.Popen([binary, str(path)], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/system", timeout=1.0).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"Orthanc did not start:\n{(tmp_path / 'orthanc.log').read_text(errors='replace')}")
        time.sleep(0.2)
    yield base, dicom_port, cxrlab_port
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


def test_orthanc_round_trip(orthanc, make_settings, model_set, rg1_dir, auth):
    base, orthanc_dicom, cxrlab_port = orthanc
    settings = make_settings(dicom_port=cxrlab_port, allow_ae=("ORTHANC",),
                             forward=(f"ORTHANC@127.0.0.1:{orthanc_dicom}",), forward_retry_initial_s=0.2,
                             forward_retry_max_s=1.0)
    app = create_app(settings, models=model_set)
    with TestClient(app) as client:
        uploaded = httpx.post(f"{base}/instances", content=(rg1_dir / "RG1_UNCR.dcm").read_bytes(), timeout=30).json()
        study = uploaded["ParentStudy"]
        pushed = httpx.post(f"{base}/modalities/cxrlab/store", content=uploaded["ID"], timeout=120)
        assert pushed.status_code == 200, pushed.text
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            instances = httpx.get(f"{base}/studies/{study}/instances", timeout=10).json()
            if len(instances) >= 3:
                break
            time.sleep(0.2)
        classes = sorted(httpx.get(f"{base}/instances/{i['ID']}/simplified-tags", timeout=10).json()["SOPClassUID"]
                         for i in instances)
        assert classes == sorted([CR, SR, SC])
        series = httpx.get(f"{base}/studies/{study}/series", timeout=10).json()
        descriptions = [s["MainDicomTags"].get("SeriesDescription", "") for s in series]
        assert sum("cxrlab" in d for d in descriptions) == 2, descriptions
        assert client.get("/v1/worklist", headers=auth).json()["total"] == 1
        assert client.get("/v1/outbox", headers=auth).json()["pending"] == 0
