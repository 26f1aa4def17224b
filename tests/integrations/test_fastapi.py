"""The FastAPI router against the daemon's HTTP server: the same requests get the same statuses, headers and bodies."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from exporter import PartitionImplementationDetector
from exporter.app import Exporter
from exporter.http import ExporterHTTPServer
from tests.integrations.common import MODULUS, ROWS, TOKEN, first_run_paths, load_example, three_wrong_keys
from tests.support import config_for, held_elsewhere, http, serving

fastapi_example = load_example("fastapi/partkey_fastapi.py")
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
VOLATILE = {"duration_seconds", "last_success_at"}


class Pair:
    """The daemon and the FastAPI app on the same database, asked the same things."""

    def __init__(self, server: ExporterHTTPServer, client: TestClient, detector: PartitionImplementationDetector):
        self.server, self.client, self.detector = server, client, detector

    def ask(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[tuple[int, dict[str, str], bytes], ...]:
        """(status, lower-cased headers, body) from the daemon, then from FastAPI."""
        status, daemon_headers, daemon_body = http(self.server.url + path, method, body, headers)
        response = self.client.request(method, path, content=body, headers=headers)
        return (
            (status, {k.lower(): v for k, v in daemon_headers.items()}, daemon_body),
            (response.status_code, dict(response.headers), response.content),
        )


def _normal(data: Any) -> Any:
    """JSON without timings, which differ between any two runs, and with first-run paths."""
    data = first_run_paths(data)
    if isinstance(data, dict):
        return {k: _normal(v) for k, v in data.items() if k not in VOLATILE}
    if isinstance(data, list):
        return [_normal(v) for v in data]
    return data


@pytest.fixture
def pair(conn: psycopg.Connection[Any], dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pair]:
    """Both servers behind the same token; the daemon's sample verification is off (it reads random pages)."""
    three_wrong_keys(conn)
    monkeypatch.setenv("PARTKEY_TEST_TOKEN", TOKEN)
    exporter = Exporter(
        config_for(
            dsn,
            "modulus: 5\nchecks: {verification_sample: {enabled: false}}",
            extra="admin_token_env: PARTKEY_TEST_TOKEN",
        )
    )
    exporter.run_all_once()
    detector = PartitionImplementationDetector(dsn, modulus=MODULUS, target="t1", admin_token=TOKEN, cache_seconds=0)
    app: FastAPI = fastapi_example.create_app(detector)
    with serving(exporter) as server, TestClient(app) as client:
        yield Pair(server, client, detector)
    assert detector.target.backend_pid is None  # the app's lifespan closed the detector's connection


def test_health_and_report_carry_the_databases_numbers(pair: Pair) -> None:
    daemon, ours = pair.ask("GET", "/admin/partition/health")
    assert daemon[0] == ours[0] == 200 and ours[1]["content-type"] == "application/json"
    data = json.loads(ours[2])
    assert data["status"] == "unhealthy"
    table = data["tables"][0]
    assert (table["target"], table["table"]) == ("t1", "public.chunks")
    assert (table["verification"]["rows_checked"], table["verification"]["mismatched"]) == (ROWS, 3)
    assert table["distribution"]["total_rows"] == ROWS and table["implementation"]["method"] == "none"
    assert _normal(data) == _normal(json.loads(daemon[2]))

    daemon, ours = pair.ask("GET", "/admin/partition/health/report")
    assert daemon[0] == ours[0] == 200 and ours[1]["content-type"] == "text/plain; charset=utf-8"
    lines = ours[2].decode().splitlines()
    assert "  Records Checked: 500" in lines and "  Incorrect Keys: 3" in lines and "  Validation: FAILED" in lines
    strip = [first_run_paths(line) for line in lines if "last success" not in line]
    assert strip == [first_run_paths(line) for line in daemon[2].decode().splitlines() if "last success" not in line]

    daemon, ours = pair.ask("GET", "/admin/partition/health/report?format=json&target=t1&table=public.chunks")
    assert daemon[0] == ours[0] == 200
    assert _normal(json.loads(ours[2])) == _normal(json.loads(daemon[2]))


BAD_REQUESTS: list[tuple[str, str, bytes | None, dict[str, str], int]] = [
    ("GET", "/admin/partition/health?target=nope", None, {}, 404),
    ("GET", "/admin/partition/health?table=public.other", None, {}, 404),
    ("GET", "/admin/partition/health/report?format=xml", None, {}, 400),
    ("GET", "/admin/partition/health/report?target=t1&target=t2", None, {}, 400),
    ("GET", "/admin/partition/health?evil=1", None, {}, 400),
    ("GET", "/admin/partition/verify", None, {}, 405),
    ("POST", "/admin/partition/health", b"", {}, 405),
    ("PUT", "/admin/partition/verify", b"", {}, 405),
    ("DELETE", "/admin/partition/health/report", None, {}, 405),
    ("POST", "/admin/partition/verify", b"", {}, 401),
    ("POST", "/admin/partition/verify", b"", {"Authorization": "Bearer wrong"}, 401),
    ("POST", "/admin/partition/verify", b"", {"Authorization": "Basic dTpw"}, 401),
    ("POST", "/admin/partition/verify", b"{not json", AUTH, 400),
    ("POST", "/admin/partition/verify", b"[1]", AUTH, 400),
    ("POST", "/admin/partition/verify", b'{"mode": "full", "force": true}', AUTH, 400),
    ("POST", "/admin/partition/verify", b'{"mode": "everything"}', AUTH, 400),
    ("POST", "/admin/partition/verify", b'{"mode": 1}', AUTH, 400),
    ("POST", "/admin/partition/verify", b"\xff\xfe", AUTH, 400),
    ("POST", "/admin/partition/verify", b'{"target": "nope"}', AUTH, 404),
    ("POST", "/admin/partition/verify", b'{"table": "public.other"}', AUTH, 404),
    ("POST", "/admin/partition/verify", b'{"mode": "incremental"}', AUTH, 404),
    ("POST", "/admin/partition/verify", b'{"x": "' + b"a" * 70_000 + b'"}', AUTH, 413),
]


def test_bad_requests_get_the_daemons_answer(pair: Pair) -> None:
    for method, path, body, headers, status in BAD_REQUESTS:
        daemon, ours = pair.ask(method, path, body, headers)
        where = f"{method} {path} {(body or b'')[:40]!r}"
        assert daemon[0] == ours[0] == status, where
        assert json.loads(ours[2]) == json.loads(daemon[2]), where
        assert json.loads(ours[2])["error"], where
        for header in ("allow", "www-authenticate"):
            assert ours[1].get(header) == daemon[1].get(header), where


def test_verify_runs_now_and_refuses_a_second_one(pair: Pair, conn: psycopg.Connection[Any]) -> None:
    conn.execute(f"UPDATE chunks SET partition_key = (partition_key + 1) % {MODULUS} WHERE id = 40")
    daemon, ours = pair.ask("POST", "/admin/partition/verify", b'{"mode": "full", "table": "public.chunks"}', AUTH)
    assert daemon[0] == ours[0] == 200
    found = json.loads(ours[2])
    assert found["success"] is True and found["error"] is None
    assert (found["verification"]["rows_checked"], found["verification"]["mismatched"]) == (ROWS, 4)
    assert _normal(found) == _normal(json.loads(daemon[2]))

    # While a verification of the table runs (its lock held by another thread), a second one gets the daemon's 409
    # (the daemon's own 409 is tested in tests/test_http.py, with the same body).
    with held_elsewhere(pair.detector._verification.lock):
        response = pair.client.post("/admin/partition/verify", headers=AUTH)
    assert (response.status_code, response.json()) == (
        409,
        {"error": "a verification of public.chunks on t1 is already running"},
    )


def test_a_failed_verification_is_502_with_the_reason(pair: Pair, conn: psycopg.Connection[Any]) -> None:
    conn.execute("ALTER TABLE chunks RENAME TO chunks_gone")
    response = pair.client.post("/admin/partition/verify", headers=AUTH)
    assert response.status_code == 502
    data = response.json()
    assert data["success"] is False and data["verification"] is None and "chunks" in data["error"]


def test_the_example_app_from_the_environment(
    conn: psycopg.Connection[Any], dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    three_wrong_keys(conn)
    for name, value in {"DSN": dsn, "MODULUS": str(MODULUS), "ADMIN_TOKEN": TOKEN}.items():
        monkeypatch.setenv(f"PARTKEY_{name}", value)
    with TestClient(fastapi_example.create_app()) as client:
        report = client.get("/admin/partition/health/report")
        assert report.status_code == 200 and "  Incorrect Keys: 3" in report.text.splitlines()
        assert "  Target: app" in report.text.splitlines()
        assert client.post("/admin/partition/verify").status_code == 401
        verified = client.post("/admin/partition/verify", headers=AUTH, json={"mode": "sample"})
        assert verified.status_code == 200 and verified.json()["verification"]["mode"] == "sample"
