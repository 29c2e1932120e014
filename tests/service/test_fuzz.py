"""Property test of the whole API from its own OpenAPI document (schemathesis).

For every operation, schemathesis generates requests that fit the schema and requests that do
not, sends them to the app in process (fake engine, tight limits so that 413s happen), and
checks each answer: never a 5xx, a documented status code and content type, a body matching
the documented schema, and schema-invalid requests refused with a 4xx. Examples are bounded
and derandomized, so the test takes seconds and fails the same way twice.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from harness import FakeEngine
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.python import asgi
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import build_app
from service.model_host import ModelHost
from service.settings import Settings

MAX_EXAMPLES = 50
# Refusals a schema-invalid request may get: 413 as well as 422, as an invalid body can also be
# too large (the body limit is checked before the body is parsed).
REFUSALS = ["400", "401", "404", "405", "413", "415", "422", "429"]
Statuses = collections.Counter[tuple[str, str, int]]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance, negative_data_rejection]


@pytest.fixture(scope="module")
def api(fake_artifact: Path) -> Iterator[schemathesis.BaseSchema]:
    settings_ = Settings(artifact=fake_artifact, warmup=False, max_sentences=8,
                         max_hypotheses=16, max_queue=64, max_body_bytes=4096)
    app = build_app(ModelHost(settings_, FakeEngine()))
    # Loading the schema through the app starts its lifespan (schemathesis keeps it running
    # on its own event-loop thread until shutdown_lifespans).
    config = SchemathesisConfig.from_dict(
        {"checks": {"negative_data_rejection": {"expected-statuses": REFUSALS}}})
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    try:
        with asgi.get_client(app) as client:
            for _ in range(500):
                if client.get("/readyz").status_code == 200:
                    break
                time.sleep(0.01)
        yield schema
    finally:
        asgi.shutdown_lifespans()


def _explore(operation: APIOperation, mode: GenerationMode, statuses: Statuses) -> None:
    """Run the checks on MAX_EXAMPLES generated requests for one operation and mode."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def answers_as_documented(case: schemathesis.Case) -> None:
        response = case.call()
        statuses[(operation.label, mode.value, response.status_code)] += 1
        case.validate_response(response, checks=CHECKS)

    answers_as_documented()


def test_every_operation_answers_as_documented(api: schemathesis.BaseSchema) -> None:
    statuses: Statuses = collections.Counter()
    operations = [result.ok() for result in api.get_all_operations()]
    assert {op.label for op in operations} >= {
        "POST /v1/score", "POST /v1/rerank", "POST /v1/tokenize", "GET /v1/model",
        "GET /healthz", "GET /readyz", "GET /metrics"}
    for operation in operations:
        _explore(operation, GenerationMode.POSITIVE, statuses)
        if operation.body:  # without a body or parameters no request is schema-invalid
            _explore(operation, GenerationMode.NEGATIVE, statuses)
    # The positive examples must reach the model, not only its refusals.
    for label in ("POST /v1/score", "POST /v1/rerank", "POST /v1/tokenize"):
        assert statuses[(label, "positive", 200)] > 0, statuses
    print("schemathesis statuses:", dict(sorted(statuses.items())))
