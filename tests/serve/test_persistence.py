"""The worklist survives: SQLite transactions, atomic artifacts, a real server killed and restarted."""

from __future__ import annotations

import sqlite3
import uuid

import httpx
import pytest

from cxrlab.serve.store import DuplicateStudyError, Store, StoreError, StudyRecord, utc_now


def _record(rank: int = 1, score: float = 0.5, sop_hash: str | None = None) -> StudyRecord:
    return StudyRecord(id=uuid.uuid4().hex, created_at=utc_now(), status="new", priority_rank=rank,
                       priority_group=["critical", "abnormal", "no-finding", "normal"][rank], priority_score=score,
                       sop_hash=sop_hash, result={"findings": [], "score": score})


def test_store_round_trip_order_and_wal(tmp_path):
    store = Store(tmp_path / "w.sqlite", tmp_path / "art")
    assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    low, high, critical, normal = _record(1, 0.2), _record(1, 0.9), _record(0, 0.1), _record(3, 0.05)
    for record in (low, normal, high, critical):
        store.add(record, {"heatmap.png": b"\x89PNG fake"})
    page, total = store.worklist()
    assert total == 4 and [r.id for r in page] == [critical.id, high.id, low.id, normal.id]
    assert store.get(high.id).result == {"findings": [], "score": 0.9}
    assert store.artifact(high.id, "heatmap.png").read_bytes() == b"\x89PNG fake"
    assert store.artifact(high.id, "mask.png") is None and store.artifact("0" * 32, "heatmap.png") is None
    read = store.mark_read(low.id)
    assert read.status == "read" and store.worklist("new")[1] == 3 and store.worklist("read")[0][0].id == low.id
    assert store.mark_read("f" * 32) is None
    store.close()
    reopened = Store(tmp_path / "w.sqlite", tmp_path / "art")
    assert [r.id for r in reopened.worklist()[0]] == [critical.id, high.id, low.id, normal.id]
    assert reopened.get(low.id).status == "read"
    reopened.close()


def test_duplicate_sop_keeps_the_first_and_nothing_of_the_second(tmp_path):
    store = Store(tmp_path / "w.sqlite", tmp_path / "art")
    first = store.add(_record(sop_hash="abc"), {"heatmap.png": b"one"})
    second = _record(sop_hash="abc")
    with pytest.raises(DuplicateStudyError) as caught:
        store.add(second, {"heatmap.png": b"two"})
    assert caught.value.existing.id == first.id
    assert not (tmp_path / "art" / second.id).exists() and store.count() == 1
    assert store.find_sop("abc").id == first.id and store.find_sop(None) is None


def test_unreferenced_artifacts_are_swept_on_open(tmp_path):
    store = Store(tmp_path / "w.sqlite", tmp_path / "art")
    kept = store.add(_record(), {"heatmap.png": b"kept"})
    store.close()
    orphan = tmp_path / "art" / uuid.uuid4().hex        # written, then the process died before COMMIT
    orphan.mkdir()
    (orphan / "heatmap.png").write_bytes(b"orphan")
    (tmp_path / "art" / ".heatmap.png.x.tmp").write_bytes(b"partial")
    (tmp_path / "art" / "notes").mkdir()                 # not ours: left alone
    reopened = Store(tmp_path / "w.sqlite", tmp_path / "art")
    assert not orphan.exists() and not (tmp_path / "art" / ".heatmap.png.x.tmp").exists()
    assert (tmp_path / "art" / "notes").is_dir()
    assert reopened.artifact(kept.id, "heatmap.png").read_bytes() == b"kept"


def test_not_a_database_is_a_clear_error(tmp_path):
    bad = tmp_path / "w.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open the worklist database"):
        Store(bad, tmp_path / "art")
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '99')")
    with pytest.raises(StoreError, match="schema version 99"):
        Store(other, tmp_path / "art2")


def test_killed_server_keeps_everything_it_answered(start_server, serve_checkpoint, phantom_images, rg1_dir,
                                                    tmp_path, auth):
    db = tmp_path / "worklist.sqlite"
    args = ["--classifier", str(serve_checkpoint), "--db", str(db)]
    server = start_server(args, "first.log")
    server.wait_ready()
    answered = {}
    with httpx.Client(base_url=server.base, headers=auth, timeout=60.0) as http:
        for path in [*phantom_images[:3], rg1_dir / "RG1_UNCR.dcm"]:
            response = http.post("/v1/studies", files={"file": (path.name, path.read_bytes())})
            assert response.status_code == 200, response.text
            answered[response.json()["study_id"]] = response.json()
        first_id = next(iter(answered))
        assert http.post(f"/v1/studies/{first_id}/read").status_code == 200
        before = http.get("/v1/worklist").json()
        heatmaps = {sid: http.get(f"/v1/studies/{sid}/heatmap.png").content for sid in answered}
    server.kill()                                                   # SIGKILL: no shutdown, no checkpoint
    assert server.proc.returncode == -9

    again = start_server(args, "second.log")
    again.wait_ready()
    with httpx.Client(base_url=again.base, headers=auth, timeout=60.0) as http:
        after = http.get("/v1/worklist").json()
        assert after == before and after["total"] == len(answered)
        assert {item["study_id"]: item["status"] for item in after["items"]}[first_id] == "read"
        for sid, body in answered.items():
            stored = http.get(f"/v1/studies/{sid}").json()
            assert stored["findings"] == body["findings"] and stored["priority"] == body["priority"]
            assert http.get(f"/v1/studies/{sid}/heatmap.png").content == heatmaps[sid]
        repeat = http.post("/v1/studies", files={"file": ("x.dcm", (rg1_dir / "RG1_UNCR.dcm").read_bytes())})
        assert repeat.json()["repeat"] is True                      # the salt file survived too
        assert httpx.get(f"{again.base}/v1/worklist", timeout=10).status_code == 401
    logs = server.output() + again.output()
    assert "Uvicorn running on http://127.0.0.1" in logs and "POST /v1/studies HTTP/1.1\" 200" in logs
    assert "Logging error" not in logs and "Traceback" not in logs
    for secret in ("CompressedSamples", "9RG1", "19400305", "26210", "Philips Medical Systems Hamburg",
                   "THORAVISION", "1.3.6.1.4.1.5962.1.2.9.20040826185059.5457"):
        assert secret not in logs, secret
