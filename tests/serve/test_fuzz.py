"""Property-based fuzzing of the API from its own OpenAPI schema (schemathesis): never a 5xx.

Every operation of ``/openapi.json`` (fetched with the token, as a client would) gets
schema-valid requests, checked for no server error, documented status codes and
responses that match their schema, then schema-violating requests, checked for no
server error. Examples are bounded and derandomized so the run is repeatable and short.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance

from cxrlab.serve.app import create_app

TOKEN = "fuzz-token-0123456"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
OPERATIONS = [("GET", "/healthz"), ("POST", "/v1/studies"), ("GET", "/v1/studies/{study_id}"),
              ("GET", "/v1/studies/{study_id}/heatmap.png"), ("GET", "/v1/studies/{study_id}/mask.png"),
              ("POST", "/v1/studies/{study_id}/read"), ("GET", "/v1/worklist"),
              ("GET", "/v1/studies/{study_id}/results/{name}"), ("POST", "/dicomweb/studies"), ("GET", "/v1/outbox")]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory, serve_checkpoint, model_set):
    from cxrlab.serve.settings import ServeSettings

    root = tmp_path_factory.mktemp("fuzz")
    app = create_app(ServeSettings(classifier=serve_checkpoint, db=root / "fuzz.sqlite", api_token=TOKEN,
                                   uid_salt=b"f" * 32, decode_workers=0), models=model_set)
    return schemathesis.openapi.from_asgi("/openapi.json", app, headers=HEADERS)


def test_schema_lists_every_operation(api_schema):
    found = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert found == set(OPERATIONS)


@pytest.mark.parametrize("method,path", OPERATIONS)
def test_operation_never_answers_5xx(api_schema, method, path):
    operation = api_schema[path][method]
    seen = []
    common = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))

    @given(case=operation.as_strategy(GenerationMode.POSITIVE))
    @settings(max_examples=12, **common)
    def positive(case):
        response = case.call_and_validate(headers=HEADERS, checks=[not_a_server_error, status_code_conformance,
                                                                    response_schema_conformance])
        seen.append(response.status_code)

    @given(case=operation.as_strategy(GenerationMode.NEGATIVE))
    @settings(max_examples=8, **common)
    def negative(case):
        response = case.call_and_validate(headers=HEADERS, checks=[not_a_server_error])
        seen.append(response.status_code)

    positive()
    if operation.path_parameters or operation.query or operation.body:
        negative()
    assert seen and max(seen) < 500
