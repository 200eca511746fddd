"""The inference API through FastAPI's test client: auth, results, error codes, worklist, CLI."""

from __future__ import annotations

import hashlib
import io
import sqlite3

import numpy as np
import pytest
import typer
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from cxrlab.errors import ConfigError
from cxrlab.serve.app import StudyResult, Worklist, create_app
from cxrlab.serve.models import Analysis, ModelSet
from cxrlab.serve.settings import ServeSettings

_ID = "0" * 32
PROTECTED = [("get", "/v1/worklist"), ("get", f"/v1/studies/{_ID}"), ("get", f"/v1/studies/{_ID}/heatmap.png"),
             ("get", f"/v1/studies/{_ID}/mask.png"), ("post", f"/v1/studies/{_ID}/read"),
             ("post", "/v1/studies"), ("get", "/openapi.json"), ("get", "/docs")]


def _stored(client) -> tuple[int, list[str]]:
    service = client.app.state.service
    folders = sorted(p.name for p in service.store.artifact_dir.iterdir() if not p.name.startswith("."))
    return service.store.count(), folders


# ----------------------------------------------------------------------------- auth


def test_healthz_is_open_and_names_the_models(client, serve_checkpoint):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["studies"] == 0
    classifier = body["models"]["classifier"]
    assert classifier["version"] == hashlib.sha256(serve_checkpoint.read_bytes()).hexdigest()[:12]
    assert classifier["labels"] == ["Cardiomegaly", "Pleural Effusion", "Pneumothorax"]


@pytest.mark.parametrize("method,path", PROTECTED)
def test_every_other_endpoint_needs_the_token(client, method, path):
    for headers in ({}, {"Authorization": "Bearer wrong-token-000000"}, {"Authorization": "Basic dGVzdDp0ZXN0"},
                    {"Authorization": "Bearer"}):
        response = getattr(client, method)(path, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json() == {"detail": "missing or invalid bearer token"}


def test_right_token_passes_scheme_case_insensitive(client, auth):
    assert client.get("/v1/worklist", headers=auth).status_code == 200
    token = auth["Authorization"].split()[1]
    assert client.get("/v1/worklist", headers={"Authorization": f"bearer {token}"}).status_code == 200
    schema = client.get("/openapi.json", headers=auth).json()
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "The token in CXRLAB_API_TOKEN"}
    assert schema["paths"]["/healthz"]["get"]["security"] == []
    assert "401" in schema["paths"]["/v1/studies"]["post"]["responses"]
    assert {"/v1/studies", "/v1/studies/{study_id}", "/v1/studies/{study_id}/heatmap.png",
            "/v1/studies/{study_id}/mask.png", "/v1/studies/{study_id}/read", "/v1/worklist"} <= set(schema["paths"])


def test_refuses_to_start_without_a_token(make_settings, model_set):
    with pytest.raises(ConfigError, match="CXRLAB_API_TOKEN"):
        create_app(make_settings(api_token=None), models=model_set)
    with pytest.raises(ConfigError, match="at least 8"):
        make_settings(api_token="short").check()
    settings = ServeSettings.from_env({"CXRLAB_API_TOKEN": "from-the-environment"},
                                      classifier=make_settings().classifier)
    assert settings.api_token == "from-the-environment" and settings.check() is settings


def test_insecure_no_auth_serves_without_token(make_settings, model_set, phantom_images, upload):
    app = create_app(make_settings(api_token=None, insecure_no_auth=True), models=model_set)
    with TestClient(app) as client:
        assert client.get("/v1/worklist").status_code == 200
        assert upload(client, phantom_images[0], headers=None).status_code == 200
        assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})


# ----------------------------------------------------------------------------- results


def test_png_upload_gives_the_pipeline_probabilities(client, auth, upload, phantom_images, serve_checkpoint):
    from cxrlab.inference.classifier import predict_images

    response = upload(client, phantom_images[1])
    assert response.status_code == 200, response.text
    body = StudyResult.model_validate(response.json()).model_dump()
    expected = predict_images(serve_checkpoint, [phantom_images[1]]).iloc[0]
    assert [f["label"] for f in body["findings"]] == ["Cardiomegaly", "Pleural Effusion", "Pneumothorax"]
    for finding in body["findings"]:
        assert finding["probability"] == pytest.approx(expected[f"prob_{finding['label']}"], abs=1e-6)
        assert finding["threshold"] == 0.5
        assert finding["positive"] == bool(expected[f"pred_{finding['label']}"])
    assert body["image"] == {"format": "png", "rows": 96, "cols": 96, "photometric": "L", "view_position": None,
                             "bits_stored": 8}
    assert body["status"] == "new" and body["repeat"] is False and body["elapsed_ms"] > 0
    assert body["screening"] is None and body["pneumothorax"] is None and body["dicom"] is None
    probs = [f["probability"] for f in body["findings"]]
    positives = [f for f in body["findings"] if f["positive"]]
    explained = max(positives, key=lambda f: f["probability"] / f["threshold"]) if positives else \
        body["findings"][int(np.argmax(probs))]
    assert body["heatmap"]["label"] == explained["label"]
    assert body["heatmap"]["url"] == f"/v1/studies/{body['study_id']}/heatmap.png"
    assert set(body["models"]) == {"classifier"}

    heat = client.get(body["heatmap"]["url"], headers=auth)
    assert heat.status_code == 200 and heat.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(heat.content))
    assert picture.size == (48, 48) and picture.mode == "RGB"
    assert client.get(body["heatmap"]["url"]).status_code == 401

    again = client.get(f"/v1/studies/{body['study_id']}", headers=auth).json()
    assert again["findings"] == body["findings"] and again["elapsed_ms"] is None
    mask = client.get(f"/v1/studies/{body['study_id']}/mask.png", headers=auth)
    assert mask.status_code == 404 and "has no mask.png" in mask.json()["detail"]


def test_jpeg_upload(client, upload, phantom_images):
    response = upload(client, phantom_images[-1])
    assert response.status_code == 200, response.text
    assert response.json()["image"]["format"] == "jpeg"


# ----------------------------------------------------------------------------- errors


def test_unreadable_uploads_are_422_naming_the_problem(client, auth, upload, phantom_images, tmp_path):
    good = phantom_images[0].read_bytes()
    cases = {
        "notes.txt": (b"this is not an image at all", "not a DICOM, PNG or JPEG file"),
        "empty.png": (b"", "empty"),
        "cut.png": (good[: len(good) // 2], "PNG"),
        "fake.dcm": (b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI", "DICOM"),
    }
    for name, (data, words) in cases.items():
        response = client.post("/v1/studies", files={"file": (name, data, "application/octet-stream")}, headers=auth)
        assert response.status_code == 422, (name, response.text)
        detail = response.json()["detail"]
        assert detail.startswith("not a readable image: ") and words.lower() in detail.lower(), (name, detail)
        assert str(tmp_path) not in detail          # no server paths in answers
    missing = client.post("/v1/studies", data={"other": "x"}, headers=auth)
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "file"]
    assert _stored(client) == (0, [])
    assert not any(client.app.state.service.spool.iterdir())


def test_upload_over_the_limit_is_413_and_stores_nothing(make_settings, model_set, auth, phantom_images):
    app = create_app(make_settings(max_upload_bytes=10000), models=model_set)
    big = np.random.default_rng(0).integers(0, 255, 30000, dtype=np.uint8).tobytes()
    with TestClient(app) as client:
        response = client.post("/v1/studies", files={"file": ("big.png", big, "image/png")}, headers=auth)
        assert response.status_code == 413
        assert response.json() == {"detail": "upload larger than the limit of 10000 bytes"}

        def chunks():                                  # no Content-Length: cut off while streaming
            yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n\r\n"
            for _ in range(10):
                yield big[:3000]
            yield b"\r\n--b--\r\n"

        streamed = client.post("/v1/studies", content=chunks(),
                               headers={**auth, "Content-Type": "multipart/form-data; boundary=b"})
        assert streamed.status_code == 413
        assert "limit of 10000 bytes" in streamed.json()["detail"]
        assert _stored(client) == (0, [])
        small = phantom_images[0]
        assert small.stat().st_size < 10000 - 300
        assert client.post("/v1/studies", files={"file": ("s.png", small.read_bytes(), "image/png")},
                           headers=auth).status_code == 200


def test_unknown_and_malformed_ids(client, auth):
    unknown = "f" * 32
    for path in (f"/v1/studies/{unknown}", f"/v1/studies/{unknown}/heatmap.png", f"/v1/studies/{unknown}/mask.png"):
        response = client.get(path, headers=auth)
        assert response.status_code == 404 and response.json()["detail"] == f"no study {unknown}"
    assert client.post(f"/v1/studies/{unknown}/read", headers=auth).status_code == 404
    assert client.get("/v1/studies/not-an-id", headers=auth).status_code == 422
    assert client.get("/v1/worklist?status=maybe", headers=auth).status_code == 422
    assert client.get("/v1/worklist?limit=0", headers=auth).status_code == 422


def test_failed_commit_leaves_nothing_half_stored(make_settings, model_set, auth, upload, phantom_images):
    settings = make_settings()
    app = create_app(settings, models=model_set)
    with TestClient(app, raise_server_exceptions=False) as client:
        with sqlite3.connect(settings.db) as conn:     # a real SQL failure inside the insert transaction
            conn.execute("CREATE TRIGGER fail BEFORE INSERT ON studies BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        assert upload(client, phantom_images[0]).status_code == 500
        assert _stored(client) == (0, [])
        with sqlite3.connect(settings.db) as conn:
            conn.execute("DROP TRIGGER fail")
        ok = upload(client, phantom_images[0])
        assert ok.status_code == 200
        assert _stored(client) == (1, [ok.json()["study_id"]])


# ----------------------------------------------------------------------------- worklist


def test_worklist_order_status_and_paging(make_settings, serve_models_dir, auth, upload, phantom_images):
    settings = make_settings()
    ids = {}
    # Same network, other stored thresholds: no finding / critical / abnormal, uploaded in that order.
    for name, image in (("none", phantom_images[0]), ("critical", phantom_images[1]), ("abnormal", phantom_images[2]),
                        ("none2", phantom_images[3])):
        checkpoint = serve_models_dir / f"clf_{name.rstrip('2')}.pt"
        with TestClient(create_app(settings, models=ModelSet(checkpoint))) as client:
            response = upload(client, image)
            assert response.status_code == 200, response.text
            ids[name] = response.json()
            assert response.json()["models"]["classifier"]["version"] == \
                hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:12]
    assert ids["critical"]["priority"]["group"] == "critical"
    assert ids["abnormal"]["priority"]["group"] == "abnormal"
    assert ids["none"]["priority"]["group"] == ids["none2"]["priority"]["group"] == "no-finding"
    with TestClient(create_app(settings, models=ModelSet(serve_models_dir / "clf.pt"))) as client:
        listing = Worklist.model_validate(client.get("/v1/worklist", headers=auth).json())
        assert listing.total == 4
        nones = sorted(("none", "none2"), key=lambda k: -ids[k]["priority"]["score"])
        expected = [ids[k]["study_id"] for k in ("critical", "abnormal", *nones)]
        assert [item.study_id for item in listing.items] == expected
        assert listing.items[0].positive_findings == ["Pneumothorax"]
        assert all(item.status == "new" for item in listing.items)

        read = client.post(f"/v1/studies/{ids['critical']['study_id']}/read", headers=auth).json()
        assert read["status"] == "read" and read["read_at"] is not None
        again = client.post(f"/v1/studies/{ids['critical']['study_id']}/read", headers=auth).json()
        assert again["read_at"] == read["read_at"]
        new = client.get("/v1/worklist?status=new", headers=auth).json()
        assert new["total"] == 3 and [i["study_id"] for i in new["items"]] == expected[1:]
        done = client.get("/v1/worklist?status=read", headers=auth).json()
        assert [i["study_id"] for i in done["items"]] == expected[:1]
        page = client.get("/v1/worklist?limit=2&offset=1", headers=auth).json()
        assert page["total"] == 4 and [i["study_id"] for i in page["items"]] == expected[1:3]


def _analysis(findings, screening=None, pneumothorax=None) -> Analysis:
    rows = [{"label": label, "probability": p, "threshold": 0.5, "positive": p >= 0.5} for label, p in findings]
    return Analysis(image={}, findings=rows, heatmap={}, heatmap_png=b"", screening=screening,
                    pneumothorax=pneumothorax)


def test_priority_rules():
    critical = ("Pneumothorax",)
    assert _analysis([("Pneumothorax", 0.7), ("Cardiomegaly", 0.9)]).priority(critical) == (0, "critical", 0.7)
    mask = {"present": True, "probability": 0.8}
    assert _analysis([("Cardiomegaly", 0.1)], pneumothorax=mask).priority(critical) == (0, "critical", 0.8)
    assert _analysis([("Cardiomegaly", 0.1)], pneumothorax={**mask, "present": False}).priority(critical)[0] == 2
    assert _analysis([("Cardiomegaly", 0.6), ("Edema", 0.9)]).priority(critical) == (1, "abnormal", 0.9)
    assert _analysis([("Cardiomegaly", 0.3), ("Edema", 0.2)]).priority(critical) == (2, "no-finding", 0.3)
    normal = {"decision": "normal", "probability": 0.04}
    assert _analysis([("Cardiomegaly", 0.6)], screening=normal).priority(critical) == (3, "normal", 0.04)
    abnormal = {"decision": "abnormal", "probability": 0.65}
    assert _analysis([("Cardiomegaly", 0.1)], screening=abnormal).priority(critical) == (1, "abnormal", 0.65)
    assert _analysis([("pneumothorax", 0.7)], screening=normal).priority(critical)[0] == 0


# ----------------------------------------------------------------------------- CLI


def _serve_cli() -> typer.Typer:
    from cxrlab.cli.serve import register

    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Test app."""

    register(app)
    return app


def test_cli_options_and_refusal_without_token(serve_checkpoint, tmp_path):
    runner = CliRunner()
    app = _serve_cli()
    help_text = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    for option in ("--classifier", "--screening", "--pneumothorax", "--host", "--port", "--db", "--insecure-no-auth",
                   "--max-upload-mb"):
        assert option in help_text
    result = runner.invoke(app, ["serve", "--classifier", str(serve_checkpoint), "--db", str(tmp_path / "w.sqlite")],
                           env={"CXRLAB_API_TOKEN": ""})
    assert result.exit_code == 2
    assert "CXRLAB_API_TOKEN" in result.output and "--insecure-no-auth" in result.output
    assert not (tmp_path / "w.sqlite").exists()
    missing = runner.invoke(app, ["serve", "--classifier", str(tmp_path / "nope")],
                            env={"CXRLAB_API_TOKEN": "a-long-enough-token"})
    assert missing.exit_code == 2 and "does not exist" in missing.output
