"""The DICOM node in process: DCMTK's echoscu/storescu push to the listener, storescp receives the results."""

from __future__ import annotations

import logging
import subprocess
import time

import pydicom
import pytest
from fastapi.testclient import TestClient

pytest.importorskip("pynetdicom")

from pydicom.uid import ExplicitVRLittleEndian  # noqa: E402
from pynetdicom import AE  # noqa: E402
from pynetdicom.sop_class import ComputedRadiographyImageStorage  # noqa: E402

from cxrlab.serve.app import create_app  # noqa: E402

from .conftest import free_port  # noqa: E402

SR, SC = "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture
def node(make_settings, model_set, start_storescp, tmp_path):
    """An app listening for DICOM (only calling AE STORESCU allowed) and forwarding to a storescp."""
    scp = start_storescp()
    settings = make_settings(dicom_port=free_port(), allow_ae=("STORESCU", "ORTHANC"),
                             forward=(f"STORESCP@127.0.0.1:{scp.port}",), forward_retry_initial_s=0.2,
                             forward_retry_max_s=0.5)
    app = create_app(settings, models=model_set)
    with TestClient(app) as client:
        yield client, settings, scp


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def test_storescu_in_sr_and_sc_out(node, dicom_tool, rg1_dir, auth, caplog):
    client, settings, scp = node
    caplog.set_level(logging.INFO)
    port = str(settings.dicom_port)
    echo = _run([dicom_tool("echoscu"), "-aet", "STORESCU", "-aec", "CXRLAB", "127.0.0.1", port])
    assert echo.returncode == 0, echo.stdout + echo.stderr
    # -xv: propose JPEG 2000 lossless (storescu proposes only uncompressed syntaxes by default)
    for name, proposal in (("RG1_UNCR.dcm", []), ("RG1_J2KR.dcm", ["-xv"])):
        store = _run([dicom_tool("storescu"), "-v", *proposal, "-aet", "STORESCU", "-aec", "CXRLAB", "127.0.0.1",
                      port, str(rg1_dir / name)])
        assert store.returncode == 0, store.stdout + store.stderr
        assert "Received Store Response (Success)" in store.stdout + store.stderr
    files = scp.wait_for(4)
    assert len(files) == 4, [f.name for f in files]          # one SR and one SC per instance, each once
    source = pydicom.dcmread(rg1_dir / "RG1_UNCR.dcm", stop_before_pixels=True)
    received = [pydicom.dcmread(f) for f in files]
    assert sorted(ds.SOPClassUID for ds in received) == sorted([SR, SC, SR, SC])
    assert len({ds.SOPInstanceUID for ds in received}) == 4
    for ds in received:
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
    for path in files:
        run = _run([dicom_tool("dciodvfy"), str(path)])
        assert not [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")], run.stderr
    worklist = client.get("/v1/worklist", headers=auth).json()
    assert worklist["total"] == 2
    study_id = worklist["items"][0]["study_id"]
    sr = client.get(f"/v1/studies/{study_id}/results/sr.dcm", headers=auth)
    assert sr.status_code == 200 and sr.headers["content-type"] == "application/dicom"
    assert client.get(f"/v1/studies/{study_id}/results/seg.dcm", headers=auth).status_code == 404
    deadline = time.monotonic() + 10
    while client.get("/v1/outbox", headers=auth).json()["pending"] and time.monotonic() < deadline:
        time.sleep(0.1)
    outbox = client.get("/v1/outbox", headers=auth).json()
    assert outbox["pending"] == 0 and outbox["failed"] == 0
    assert not list(settings.outbox_dir.rglob("*.dcm"))      # delivered objects are deleted


def test_unlisted_calling_ae_is_rejected(node, dicom_tool):
    _, settings, _ = node
    echo = _run([dicom_tool("echoscu"), "-aet", "INTRUDER", "-aec", "CXRLAB", "127.0.0.1", str(settings.dicom_port)])
    assert echo.returncode != 0
    assert "Association Rejected" in echo.stdout + echo.stderr
    wrong_called = _run([dicom_tool("echoscu"), "-aet", "STORESCU", "-aec", "OTHER", "127.0.0.1",
                         str(settings.dicom_port)])
    assert wrong_called.returncode != 0


def test_unsupported_transfer_syntax_is_refused_in_negotiation(node):
    _, settings, _ = node
    ae = AE(ae_title="STORESCU")
    mpeg2 = "1.2.840.10008.1.2.4.100"                      # MPEG2 Main Profile: no pydicom decoder
    ae.add_requested_context(ComputedRadiographyImageStorage, [mpeg2])
    ae.add_requested_context(ComputedRadiographyImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", settings.dicom_port, ae_title="CXRLAB")
    try:
        assert assoc.is_established
        assert [c.transfer_syntax[0] for c in assoc.accepted_contexts] == [ExplicitVRLittleEndian]
        refused = assoc.rejected_contexts
        assert len(refused) == 1 and refused[0].result == 0x04   # transfer syntaxes not supported
    finally:
        assoc.release()


def test_down_destination_gets_every_result_once_back(make_settings, model_set, start_storescp, dicom_tool,
                                                      rg1_dir, auth, tmp_path):
    port = free_port()
    settings = make_settings(dicom_port=free_port(), forward=(f"STORESCP@127.0.0.1:{port}",),
                             forward_retry_initial_s=0.2, forward_retry_max_s=0.5)
    app = create_app(settings, models=model_set)
    with TestClient(app) as client:
        store = _run([dicom_tool("storescu"), "-aec", "CXRLAB", "127.0.0.1", str(settings.dicom_port),
                      str(rg1_dir / "RG1_UNCR.dcm")])
        assert store.returncode == 0, store.stdout + store.stderr
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            outbox = client.get("/v1/outbox", headers=auth).json()
            if outbox["pending"] == 2 and all(item["attempts"] >= 2 for item in outbox["items"]):
                break
            time.sleep(0.1)
        assert outbox["pending"] == 2 and outbox["items"][0]["last_error"], outbox
        assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in settings.outbox_dir.rglob("*.dcm"))
        scp = start_storescp(port)
        files = scp.wait_for(2)
        assert len(files) == 2
        time.sleep(1.0)                                     # a second delivery would show as a third file
        assert len(scp.files()) == 2
        assert client.get("/v1/outbox", headers=auth).json()["pending"] == 0
