"""The collector, the report, the admin API and the HTTP server from published snapshots, with no database at all.

The target's DSN points at a host that does not exist, and no check is run: what /metrics, /report and the admin
endpoints show comes from CheckResults published into the store, as the checks would publish them. These tests run
in `make test-nodb`, which gives PostgreSQL no chance to start.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporter.app import Exporter
from exporter.collector import PartkeyCollector
from exporter.http import ExporterHTTPServer
from exporter.introspect import Implementation, PartitionInfo
from exporter.partition_stats import PartitionRows, summarize
from exporter.pg.policy import METHODS
from exporter.snapshot import CheckResult, SnapshotStore
from exporter.verify import VerificationResult
from tests.support import assert_unhealthy_report, config_for, http, metrics, parse, serving, value

# Nothing listens on port 1 (only root may, and nothing does): a test that reached for the database would fail at
# once (connection refused) instead of passing by accident. The password must never be shown.
NOWHERE = "postgresql://partkey:s3cret-offline@127.0.0.1:1/none?connect_timeout=2"
TOKEN = "tok-offline"
NOW = 1.8e9
T1 = {"target": "t1", "table": "public.chunks"}


def implementation(**changes: object) -> Implementation:
    """What detect() reports for a LIST table of five partitions with a CHECK and the safe formula."""
    partitions = tuple(PartitionInfo(f"chunks_part_0{i}", 16400 + i, False) for i in range(5))
    fields: dict[str, object] = dict(
        server_version_num=180006,
        server_version="18.6",
        table="public.chunks",
        shape="list",
        partition_key="LIST (partition_key)",
        partitioned_by_key_column=True,
        partitions=partitions,
        has_default_partition=False,
        key_column_exists=True,
        column_count=4,
        generated_kind=None,
        generated_expression=None,
        triggers=(),
        trigger_location=None,
        trigger_enabled=None,
        partitions_missing_trigger=(),
        checks=(),
        method="check",
        formula_overflow=False,
        optimal=True,
        reason="a CHECK rejects wrong keys without a trigger's cost; routing already needs the key",
        primary_key=("id", "collection_id", "partition_key"),
    )
    fields.update(changes)
    return Implementation(**fields)  # type: ignore[arg-type]


def result(check: str, payload: object, success: bool = True, error: str | None = None) -> CheckResult:
    """A check's result on t1/public.chunks as its runner would publish it."""
    last = NOW - 5 if success else None
    return CheckResult("t1", "public.chunks", check, success, 0.25, NOW - 5, last, 60.0, error, payload)


def publish_healthy_with_two_bad_rows(store: SnapshotStore) -> None:
    """The snapshots a run of every check publishes: a CHECK-kept LIST table, 500 rows, two wrong keys."""
    store.publish(result("implementation", implementation()), up=True, version=(18, "18.6"))
    full = VerificationResult("full", 500, 2, 0, 0)
    store.publish(result("verification_full", full), rows_verified=("full", 500))
    rows = [PartitionRows(f"chunks_part_0{i}", 100, False) for i in range(5)]
    store.publish(result("distribution", summarize("estimate", True, rows)))
    store.publish(result("insert_probe", None), probe=([0.002, 0.004], 0))


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Exporter:
    """An exporter whose one target cannot be reached, behind a bearer token; never started."""
    monkeypatch.setenv("PARTKEY_TEST_TOKEN", TOKEN)
    return Exporter(config_for(NOWHERE, "modulus: 5", extra="admin_token_env: PARTKEY_TEST_TOKEN"))


@pytest.fixture
def server(exporter: Exporter) -> Iterator[ExporterHTTPServer]:
    """The exporter served on a free local port."""
    with serving(exporter) as running:
        yield running


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


def test_collector_renders_each_published_check() -> None:
    store = SnapshotStore()
    publish_healthy_with_two_bad_rows(store)
    registry = CollectorRegistry(auto_describe=True)  # describe() must name every family collect() yields
    registry.register(PartkeyCollector(store, ["t1", "t2"]))
    samples = parse(generate_latest(registry).decode())
    assert value(samples, "partkey_up", target="t1") == 1 and value(samples, "partkey_up", target="t2") == 0
    assert value(samples, "partkey_postgres_version", target="t1", version="18.6") == 18
    states = {m: value(samples, "partkey_key_implementation", **T1, implementation=m) for m in METHODS}
    assert states == {m: float(m == "check") for m in METHODS}
    assert value(samples, "partkey_key_implementation_optimal", **T1) == 1
    assert value(samples, "partkey_table_partitions", **T1) == 5
    assert value(samples, "partkey_mismatched_rows", **T1, mode="full") == 2
    assert value(samples, "partkey_rows_verified_total", **T1, mode="full") == 500
    assert value(samples, "partkey_partition_rows", **T1, partition="chunks_part_03", source="estimate") == 100
    assert value(samples, "partkey_partition_skew_ratio", **T1, source="estimate") == 1
    assert value(samples, "partkey_insert_probe_duration_seconds_count", **T1) == 2
    assert value(samples, "partkey_check_success", **T1, check="verification_full") == 1
    assert value(samples, "partkey_check_last_success_timestamp_seconds", **T1, check="distribution") == NOW - 5
    assert ("partkey_key_trigger_enabled", tuple(sorted(T1.items()))) not in samples  # no trigger, no series


def test_a_failed_check_keeps_its_success_gauge_and_no_payload_series() -> None:
    store = SnapshotStore()
    store.publish(result("implementation", None, success=False, error="connection refused"), up=False)
    registry = CollectorRegistry()
    registry.register(PartkeyCollector(store, ["t1"]))
    samples = parse(generate_latest(registry).decode())
    assert value(samples, "partkey_up", target="t1") == 0
    assert value(samples, "partkey_check_success", **T1, check="implementation") == 0
    assert not [k for k in samples if k[0] == "partkey_key_implementation"]
    assert not [k for k in samples if k[0] == "partkey_check_last_success_timestamp_seconds"]


def test_metrics_report_and_health_over_http(server: ExporterHTTPServer) -> None:
    assert http(server.url + "/healthz")[0] == 200  # liveness never needs the database
    status, _, body = http(server.url + "/readyz")
    assert status == 503 and json.loads(body) == {"ready": False, "targets": {"t1": False}}
    publish_healthy_with_two_bad_rows(server.exporter.store)
    status, _, body = http(server.url + "/readyz")
    assert status == 200 and json.loads(body)["ready"] is True
    samples = metrics(server.url)
    assert value(samples, "partkey_mismatched_rows", **T1, mode="full") == 2
    assert_unhealthy_report(server.url, method="check", mismatched=2, checked=500, chunks=500)


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/report?target=../../etc/passwd", 404, "unknown target '../../etc/passwd'"),
        ("/report?target=nope", 404, "unknown target 'nope'"),
        ("/report?table=public.other", 404, "unknown table 'public.other'"),
        ("/report?format=xml", 400, "format must be text or json, got 'xml'"),
        ("/report?target=t1&target=t2", 400, "query parameter 'target' given more than once"),
        ("/report?evil=1", 400, "unknown query parameter 'evil'"),
        ("/../../etc/passwd", 404, "no such path '/../../etc/passwd'"),
        ("/admin/partition/verify", 405, "/admin/partition/verify takes POST"),
    ],
)
def test_bad_get_requests(server: ExporterHTTPServer, path: str, status: int, message: str) -> None:
    got, _, body = http(server.url + path)
    assert (got, json.loads(body)) == (status, {"error": message})


def test_verify_refuses_without_the_token(server: ExporterHTTPServer) -> None:
    url = server.url + "/admin/partition/verify"
    status, headers, body = http(url, "POST", b"{}")
    assert status == 401 and json.loads(body) == {"error": "missing or wrong bearer token"}
    assert headers["WWW-Authenticate"] == "Bearer"
    assert http(url, "POST", b"{}", {"Authorization": "Bearer wrong"})[0] == 401


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "body is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        (b"[1, 2]", "body must be a JSON object"),
        (b'{"mode": "everything"}', "mode must be full, sample or incremental, got 'everything'"),
        (b'{"mode": 3}', "field 'mode' must be a string"),
        (b'{"table": "x", "drop": true}', "unknown field(s) in body: drop"),
        (b"\xff\xfe", "body is not UTF-8: invalid start byte at byte 0"),
        (b"\n", "body is not valid JSON: Expecting value: line 2 column 1 (char 1)"),  # an empty body is the defaults
    ],
)
def test_verify_bad_bodies(server: ExporterHTTPServer, body: bytes, message: str) -> None:
    status, _, answer = http(server.url + "/admin/partition/verify", "POST", body, _auth())
    assert (status, json.loads(answer)) == (400, {"error": message})


def test_verify_unknown_table_and_incremental_without_watermark(server: ExporterHTTPServer) -> None:
    url = server.url + "/admin/partition/verify"
    status, _, body = http(url, "POST", b'{"target": "t9"}', _auth())
    assert (status, json.loads(body)) == (404, {"error": "unknown target/table t9/*"})
    status, _, body = http(url, "POST", b'{"mode": "incremental"}', _auth())
    assert status == 404
    assert json.loads(body)["error"] == "public.chunks has no monotonic_column: incremental mode is unavailable"


def test_oversize_body_and_wrong_methods(server: ExporterHTTPServer) -> None:
    url = server.url + "/admin/partition/verify"
    status, _, body = http(url, "POST", b"x" * (64 * 1024 + 1), _auth())
    assert (status, json.loads(body)) == (413, {"error": "body larger than 65536 bytes"})
    status, headers, _ = http(server.url + "/metrics", "DELETE")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    status, headers, _ = http(url, "PUT", b"{}")
    assert status == 405 and headers["Allow"] == "POST"
    status, _, body = http(server.url + "/metrics", "POST", b"")
    assert (status, json.loads(body)) == (405, {"error": "/metrics does not take POST"})


def test_a_verification_against_an_unreachable_target_says_so_without_the_password(
    server: ExporterHTTPServer,
) -> None:
    status, _, body = http(server.url + "/admin/partition/verify", "POST", b'{"mode": "full"}', _auth())
    answer = json.loads(body)
    assert status == 502 and answer["success"] is False and answer["verification"] is None
    assert answer["error"].startswith("target t1 is down: ") and "s3cret-offline" not in body.decode()
