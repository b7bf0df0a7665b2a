"""Schemathesis over the app's own OpenAPI schema, every route, against a live uvicorn on 127.0.0.1 with a gallery
and a token: no answer is a 5xx, every answer (status, type, body) matches the schema, and no request the
schema calls valid is refused (tests/schemathesis.toml says what an upload's bytes may still be refused for)."""
from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from captioner.web.app import create_app
from webapp import LiveServer, examples_gallery, tiny_captioner

TOKEN = "schema-test-token"


@pytest.fixture(scope="module")
def url(tiny_model_dir, tmp_path_factory):
    captioner = tiny_captioner(tiny_model_dir)
    gallery = examples_gallery(tmp_path_factory.mktemp("schema-gallery"), captioner)
    with LiveServer(create_app(captioner, gallery, max_upload_bytes=256 * 1024, token=TOKEN)) as url:
        yield url


CONFIG = SchemathesisConfig.from_path(Path(__file__).parent / "schemathesis.toml")
schema = schemathesis.openapi.from_dict(create_app(None).openapi(), config=CONFIG)  # the schema needs no model
schema.config.phases.coverage.enabled = False  # its hundreds of boundary cases per route cost minutes here


@schema.parametrize()
@settings(max_examples=10, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_every_route_answers_as_its_schema_says(case, url):
    case.call_and_validate(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60,
                           checks=[not_a_server_error, response_schema_conformance, status_code_conformance,
                                   content_type_conformance, positive_data_acceptance])
