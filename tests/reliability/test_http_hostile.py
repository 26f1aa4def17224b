"""Hostile HTTP clients: fuzzed paths, queries, bodies and request lines, and slowloris; never a 5xx, never down."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from urllib.parse import quote, urlencode

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.app import Exporter
from exporter.http import ExporterHTTPServer
from tests.reliability.harness import scrape
from tests.schema import create_list_table, insert_rows
from tests.support import config_for, serving

KNOWN_PATHS = [
    "/",
    "/metrics",
    "/healthz",
    "/readyz",
    "/report",
    "/admin/partition/health",
    "/admin/partition/health/report",
    "/admin/partition/verify",
]
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def server(admin_dsn: str) -> Iterator[ExporterHTTPServer]:
    """One exporter (no token, so bodies reach the parser) for the whole module: fuzzing needs many requests."""
    from tests.pgserver import scratch_database

    with scratch_database(admin_dsn, "partkey_hostile_http") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            create_list_table(conn, modulus=4, trigger=None)
            insert_rows(conn, 200, modulus=4)
        exporter = Exporter(config_for(dsn, "modulus: 4"))
        exporter.run_all_once()
        with serving(exporter) as running:
            yield running


def _request(
    server: ExporterHTTPServer,
    method: str,
    target: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(str(host), int(port), timeout=10)
    try:
        connection.request(method, target, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def _assert_clean(method: str, status: int, headers: dict[str, str], body: bytes) -> None:
    """A 2xx, or a 4xx with a JSON {"error": "..."} body; never a 5xx."""
    assert 200 <= status < 500 and not 300 <= status < 400, (status, body[:200])
    if status >= 400 and method != "HEAD":
        assert headers.get("content-type", "").startswith("application/json"), (status, headers, body[:200])
        data = json.loads(body)
        assert isinstance(data, dict) and isinstance(data.get("error"), str) and data["error"], data


text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
paths = st.one_of(
    st.sampled_from(KNOWN_PATHS),
    st.builds(lambda a, b: a + "/" + quote(b, safe="/.%~"), st.sampled_from([*KNOWN_PATHS, ""]), text),
)
queries = st.one_of(
    st.just(""),
    st.builds(
        lambda d: urlencode(d, doseq=True),
        st.dictionaries(
            st.sampled_from(["format", "target", "table", "mode", "x", "target[]"]) | text,
            st.lists(text, min_size=1, max_size=2),
            max_size=3,
        ),
    ),
    st.builds(lambda raw: quote(raw, safe="=&%+"), text),
)
bodies = st.one_of(
    st.none(),
    st.binary(max_size=300),
    st.builds(
        lambda d: json.dumps(d).encode(),
        st.dictionaries(
            st.sampled_from(["target", "table", "mode", "drop"]) | text,
            st.one_of(text, st.integers(), st.none(), st.booleans(), st.lists(text, max_size=2)),
            max_size=4,
        ),
    ),
)


@FUZZ
@given(method=st.sampled_from(METHODS), path=paths, query=queries, body=bodies)
def test_fuzzed_requests_get_2xx_or_json_4xx(
    server: ExporterHTTPServer, method: str, path: str, query: str, body: bytes | None
) -> None:
    target = path + ("?" + query if query else "")
    status, headers, answer = _request(server, method, target, body)
    _assert_clean(method, status, headers, answer)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /metrics HTTP/9.9\r\n\r\n", 400),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nContent-Length: x\r\n\r\n", 200),
        (b"POST /admin/partition/verify HTTP/1.1\r\nContent-Length: -5\r\n\r\n", 400),
        (b"POST /admin/partition/verify HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
        (b"POST /admin/partition/verify HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
        (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET /report?target=%2e%2e%2f%2e%2e%2fetc%2fpasswd HTTP/1.1\r\n\r\n", 404),
        (b"GET /report?target=..%00 HTTP/1.1\r\n\r\n", 404),
        (b"GET /metrics HTTP/1.1\r\n" + b"X-Big: " + b"b" * 70000 + b"\r\n\r\n", 431),
        (b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(150)) + b"\r\n", 431),
    ],
    ids=[
        "http-9.9",
        "garbage",
        "bad-length-on-get",
        "negative-length",
        "huge-length",
        "chunked",
        "long-line",
        "encoded-traversal",
        "nul-target",
        "huge-header",
        "too-many-headers",
    ],
)
def test_malformed_requests_get_a_json_4xx(server: ExporterHTTPServer, raw: bytes, status: int) -> None:
    host, port = server.server_address[:2]
    with socket.create_connection((str(host), int(port)), timeout=10) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    got = int(status_line.split()[1])
    assert got == status, reply[:300]
    _assert_clean("GET", got, headers, body)


def _held_open(sock: socket.socket) -> bool:
    """Whether the server still holds this client's connection open, unanswered (it has neither replied nor closed)."""
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)  # a reply, or b"" when the server closed it: not held either way
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def test_slowloris_does_not_block_scrapes(server: ExporterHTTPServer) -> None:
    """Scrapes are answered while 40 half-sent requests hold their connections, and the daemon is fine afterwards."""
    host, port = server.server_address[:2]
    idle: list[socket.socket] = []
    try:
        for index in range(40):  # clients that send half a request and then hold their socket
            sock = socket.create_connection((str(host), int(port)), timeout=5)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n" if index % 2 else b"PO")
            idle.append(sock)
        for _ in range(20):
            assert scrape(server.url)[0] == 200
        trickle = idle[0]
        for _ in range(3):  # one byte at a time keeps its own thread busy, nobody else's
            trickle.sendall(b"S")
            assert scrape(server.url)[0] == 200
        # Every idle client is still held, unanswered: the scrapes did not wait for any of them to time out (the
        # server drops an idle client after SOCKET_TIMEOUT_SECONDS, 10 s). Causal, so no bound on how long they took.
        held = [index for index, sock in enumerate(idle) if _held_open(sock)]
        assert held == list(range(40)), (
            f"dropped or answered before the scrapes ended: {sorted(set(range(40)) - set(held))}"
        )
    finally:
        for sock in idle:
            sock.close()
    status, _, body = _request(server, "GET", "/healthz")
    assert (status, body) == (200, b"ok\n")
    status, _, body = _request(server, "GET", "/metrics")
    assert status == 200 and b'partkey_up{target="t1"} 1.0' in body
