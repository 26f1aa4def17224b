"""The daemon's HTTP API against its own /openapi.json: schemathesis generates the requests and checks the answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from exporter.app import Exporter
from exporter.exposition import CACHED_CONTENT_TYPES
from exporter.http import GET_PATHS, POST_PATHS, ExporterHTTPServer
from exporter.openapi import SPEC
from tests.pgserver import scratch_database
from tests.schema import create_list_table, insert_rows
from tests.support import config_for, http, serving

TOKEN = "schema-test-token"
TOKEN_ENV = "PARTKEY_SCHEMA_TOKEN"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Per operation, plus the coverage phase's fixed cases; the whole file takes about 10 s on 2 busy cores.
EXAMPLES = 50
# The checks that need no live-server quirks, for answers a generated case cannot produce (503, 502).
CONFORMANCE = [
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture(scope="module")
def server(admin_dsn: str) -> Iterator[ExporterHTTPServer]:
    """An exporter with a token, on a LIST table with the legacy trigger, one stale key and a monotonic column."""
    with scratch_database(admin_dsn, "partkey_http_schema") as dsn, pytest.MonkeyPatch.context() as patch:
        with psycopg.connect(dsn, autocommit=True) as conn:
            create_list_table(conn, modulus=4)
            insert_rows(conn, 200, modulus=4)
            conn.execute("UPDATE chunks SET collection_id = md5('stale')::uuid WHERE id = 5")  # a wrong key
        patch.setenv(TOKEN_ENV, TOKEN)
        exporter = Exporter(config_for(dsn, "modulus: 4\nmonotonic_column: id", extra=f"admin_token_env: {TOKEN_ENV}"))
        exporter.run_all_once()
        with serving(exporter) as running:
            yield running


@pytest.fixture(scope="module")
def down() -> Iterator[ExporterHTTPServer]:
    """An exporter whose only target never answers: not ready, no implementation, failing checks."""
    exporter = Exporter(config_for("postgresql://127.0.0.1:1/nowhere?connect_timeout=1", "modulus: 4"))
    exporter.run_all_once()
    with serving(exporter) as running:
        yield running


@pytest.fixture(scope="module")
def api(server: ExporterHTTPServer) -> OpenApiSchema:
    """The schema as the daemon serves it."""
    return schemathesis.openapi.from_url(server.url + "/openapi.json")


# Generated from the module's SPEC (schemathesis's fixture-based loader breaks on pytest 9's node ids);
# the next test proves the daemon serves exactly this document.
schema = schemathesis.openapi.from_dict(SPEC)


@schema.parametrize()
# The health checks judge data generation (too slow, too filtered), which a busy CI machine can trip.
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_conforms(case: schemathesis.Case[Any], server: ExporterHTTPServer) -> None:
    """Every built-in check: not_a_server_error, status code, content type, schema, headers, auth, methods..."""
    case.call_and_validate(base_url=server.url, headers=AUTH)


def test_the_document_is_valid_openapi_and_lists_exactly_the_served_paths(
    server: ExporterHTTPServer, api: OpenApiSchema
) -> None:
    api.validate()  # loaded from the daemon's URL, checked against the OpenAPI 3.0 meta-schema
    status, headers, body = http(server.url + "/openapi.json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == SPEC  # so the generated tests above ran against what the daemon serves
    assert set(SPEC["paths"]) == GET_PATHS | POST_PATHS
    for path, item in SPEC["paths"].items():
        assert set(item) == ({"post"} if path in POST_PATHS else {"get"}), path
    results = list(schema.get_all_operations())
    labels = [result.ok().label for result in results if isinstance(result, Ok)]
    served = [f"GET {p}" for p in GET_PATHS] + [f"POST {p}" for p in POST_PATHS]
    assert len(labels) == len(results) and sorted(labels) == sorted(served)


def test_a_down_target_conforms_too(api: OpenApiSchema, down: ExporterHTTPServer) -> None:
    """The answers a healthy daemon never gives: /readyz 503, nulls in the health, a failed verification's 502."""
    seen = {}
    verify = api["/admin/partition/verify"]["POST"]
    cases = [api[path]["GET"].Case() for path in ("/readyz", "/admin/partition/health", "/report")]
    for case in [*cases, verify.Case(body={"mode": "sample"})]:
        response = case.call(base_url=down.url, headers=AUTH)
        case.validate_response(response, checks=CONFORMANCE)
        seen[case.path] = response.status_code
    assert seen == {"/readyz": 503, "/admin/partition/health": 200, "/report": 200, "/admin/partition/verify": 502}


def test_unauthorized_and_oversize_answers_conform(api: OpenApiSchema, server: ExporterHTTPServer) -> None:
    """A wrong token: 401 with WWW-Authenticate; a body over 64 KiB: 413; both as documented."""
    operation = api["/admin/partition/verify"]["POST"]
    seen = []
    for case, headers in [
        (operation.Case(body={"mode": "full"}), {"Authorization": "Bearer wrong"}),
        (operation.Case(body={"target": "x" * 64 * 1024}), AUTH),
    ]:
        response = case.call(base_url=server.url, headers=headers)
        case.validate_response(response, checks=CONFORMANCE)
        seen.append(response.status_code)
    assert seen == [401, 413]


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "BREW"])
def test_a_method_http_server_does_not_know_gets_405_not_501(server: ExporterHTTPServer, method: str) -> None:
    """schemathesis found TRACE answered 501 (a 5xx); now every unserved method gets 405 with Allow."""
    for path, allowed in [("/metrics", "GET, HEAD"), ("/admin/partition/verify", "POST")]:
        status, headers, body = http(server.url + path, method)
        assert (status, headers.get("Allow")) == (405, allowed), (method, path, body)
        assert json.loads(body) == {"error": f"Unsupported method ({method!r})"}


@pytest.mark.parametrize(
    "accept",
    [
        "text/plain; version=x",
        "application/openmetrics-text; version=1.a",
        "application/openmetrics-text; version=",
        "text/plain; version=1.0.0; escaping=zz",
    ],
)
def test_a_hostile_accept_header_gets_a_scrape(server: ExporterHTTPServer, accept: str) -> None:
    """An Accept prometheus_client cannot parse falls back to the text format (it used to drop the connection)."""
    status, headers, body = http(server.url + "/metrics", headers={"Accept": accept})
    assert status == 200 and b"partkey_up" in body, (status, headers)


def test_accept_versions_do_not_grow_the_render_cache(server: ExporterHTTPServer) -> None:
    """The client picks the version echoed in the content type; the per-snapshot cache stays small anyway."""
    exporter = server.exporter
    for minor in range(50):
        status, headers, _ = http(
            server.url + "/metrics", headers={"Accept": f"application/openmetrics-text; version=1.0.{minor}"}
        )
        assert status == 200 and f"version=1.0.{minor}" in headers["Content-Type"]
    cache = exporter.exposition
    # 50 bodies of ~10 KB each before the fix; now at most a few content types of bodies and per-target fragments.
    assert len(cache._layouts) <= CACHED_CONTENT_TYPES
    assert len(cache._content_types) <= CACHED_CONTENT_TYPES
    assert len(cache._fragments) <= CACHED_CONTENT_TYPES * (len(exporter.targets) + 1)
