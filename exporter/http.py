"""HTTP endpoints: /metrics from the snapshot, health and report pages, and the admin API."""

from __future__ import annotations

import itertools
import json
import logging
import ssl
import sys
import threading
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from exporter import __version__
from exporter.admin import AdminError, health_json, report_query, report_text, select, verify
from exporter.app import Exporter
from exporter.config import ConfigError, ListenConfig
from exporter.exposition import wants_gzip
from exporter.openapi import SPEC
from exporter.statuspage import HEADERS as STATUS_PAGE_HEADERS
from exporter.statuspage import status_page

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
GIL_SWITCH_SECONDS = 0.001
SOCKET_TIMEOUT_SECONDS = 10.0  # a slow client holds only its own thread, and only this long
GET_PATHS = {
    "/",
    "/metrics",
    "/probe",
    "/healthz",
    "/readyz",
    "/report",
    "/admin/partition/health",
    "/admin/partition/health/report",
    "/openapi.json",
}
POST_PATHS = {"/admin/partition/verify"}


class Handler(BaseHTTPRequestHandler):
    """One request; the exporter is attached to the server."""

    server: ExporterHTTPServer
    timeout = SOCKET_TIMEOUT_SECONDS
    server_version = f"partkey-exporter/{__version__}"
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, a kept-alive client's delayed ACK held the
    # body ~40 ms (measured by bench/peers.py). TCP_NODELAY sends it at once.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        """Access logs at debug level only."""
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        """Write a complete response."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_parts(
        self,
        status: HTTPStatus,
        parts: Sequence[Sequence[bytes]],
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Write a complete response whose body is PARTS (groups of buffers), in order, joined in one C call."""
        # Joined per response and freed after it, never kept: a fleet's plain body is ~10,000 pieces and megabytes.
        # Side by side next to two busy threads (bench/exposition.py, 20 MB): a Python loop writing the pieces in
        # 256 KB batches took p50 212 ms, one join 130 ms (every bytecode of the loop waits for the interpreter lock).
        body = parts[0][0] if len(parts) == 1 and len(parts[0]) == 1 else b"".join(itertools.chain.from_iterable(parts))
        self._send(status, body, content_type, headers)

    def _json(self, status: HTTPStatus, data: Any, headers: dict[str, str] | None = None) -> None:
        """Write a JSON response."""
        self._send(status, json.dumps(data, indent=2, default=str).encode() + b"\n", "application/json", headers)

    def _error(self, error: AdminError) -> None:
        """Write a JSON error with its message."""
        headers: dict[str, str] = {}
        if error.status == HTTPStatus.METHOD_NOT_ALLOWED:
            headers["Allow"] = self._allowed()
        elif error.status == HTTPStatus.UNAUTHORIZED:
            headers["WWW-Authenticate"] = "Bearer"
        self._json(error.status, {"error": error.message}, headers)

    def _allowed(self) -> str:
        """The methods this path accepts."""
        return "POST" if self.path_only in POST_PATHS else "GET, HEAD"

    @property
    def path_only(self) -> str:
        """The request path without the query."""
        return urlsplit(self.path).path

    def _query(self) -> tuple[str, str | None, str | None]:
        """format, target and table from the query string."""
        return report_query(parse_qs(urlsplit(self.path).query, keep_blank_values=True))

    def do_GET(self) -> None:
        """Route GET and HEAD."""
        try:
            self._get()
        except AdminError as error:
            self._error(error)

    do_HEAD = do_GET

    def _get(self) -> None:
        """The GET routes."""
        path = self.path_only
        exporter = self.server.exporter
        if path in POST_PATHS:
            raise AdminError(HTTPStatus.METHOD_NOT_ALLOWED, f"{path} takes POST")
        if path in {"/metrics", "/probe"}:
            self._exposition(path)
        elif path == "/healthz":
            self._send(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8")
        elif path == "/readyz":
            ready = exporter.ready()
            status = HTTPStatus.OK if all(ready.values()) else HTTPStatus.SERVICE_UNAVAILABLE
            self._json(status, {"ready": all(ready.values()), "targets": ready})
        elif path in {"/report", "/admin/partition/health/report", "/admin/partition/health"}:
            fmt, target, table = self._query()
            healths = select(exporter, target, table)
            found = exporter.discoveries(target) if table is None else []  # a table asked for: that table alone
            if path == "/admin/partition/health" or fmt == "json":
                self._json(HTTPStatus.OK, health_json(healths, found))
            else:
                self._send(HTTPStatus.OK, report_text(healths, found).encode(), "text/plain; charset=utf-8")
        elif path == "/openapi.json":
            self._json(HTTPStatus.OK, SPEC)
        elif path == "/":
            page = status_page(exporter).encode()
            self._send(HTTPStatus.OK, page, "text/html; charset=utf-8", STATUS_PAGE_HEADERS)
        else:
            raise AdminError(HTTPStatus.NOT_FOUND, f"no such path {path!r}")

    def _exposition(self, path: str) -> None:
        """/metrics, or /probe?target=NAME (one target's part); cached, never SQL; gzip when the client takes it."""
        target: str | None = None
        if path == "/probe":
            values = parse_qs(urlsplit(self.path).query, keep_blank_values=True).get("target", [])
            if len(values) != 1 or not values[0]:
                raise AdminError(HTTPStatus.BAD_REQUEST, "/probe needs exactly one target=NAME")
            target = values[0]
            if target not in self.server.exporter.targets:
                raise AdminError(HTTPStatus.NOT_FOUND, f"unknown target {target!r}")
        compress = wants_gzip(self.headers.get("Accept-Encoding", ""))
        parts, content_type = self.server.exporter.exposition.render_parts(
            self.headers.get("Accept", ""), target=target, compress=compress
        )
        headers = {"Vary": "Accept, Accept-Encoding"}
        if compress:
            headers["Content-Encoding"] = "gzip"
        self._send_parts(HTTPStatus.OK, parts, content_type, headers)

    def do_POST(self) -> None:
        """Route POST."""
        try:
            self._post()
        except AdminError as error:
            self._error(error)

    def _post(self) -> None:
        """POST /admin/partition/verify: token, body, one at a time per table."""
        path = self.path_only
        if path not in POST_PATHS:
            status = HTTPStatus.METHOD_NOT_ALLOWED if path in GET_PATHS else HTTPStatus.NOT_FOUND
            raise AdminError(status, f"{path} does not take POST" if path in GET_PATHS else f"no such path {path!r}")
        body = self._read_body()
        status, payload = verify(self.server.exporter, self.headers.get("Authorization"), body)
        self._json(status, payload)

    def _read_body(self) -> bytes:
        """The request body, refusing oversize or chunked ones."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True  # its unread body must not be parsed as the next request
            raise AdminError(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length; chunked bodies are not accepted")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            self.close_connection = True
            raise AdminError(HTTPStatus.BAD_REQUEST, "Content-Length is not a number") from None
        if length < 0:
            self.close_connection = True
            raise AdminError(HTTPStatus.BAD_REQUEST, "Content-Length is negative")
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise AdminError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body larger than {MAX_BODY_BYTES} bytes")
        return self.rfile.read(length) if length else b""

    def _not_allowed(self) -> None:
        """PUT, DELETE, PATCH and friends."""
        self._error(AdminError(HTTPStatus.METHOD_NOT_ALLOWED, f"method {self.command} not allowed"))

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors http.server finds itself (request line, headers, version) as a JSON 4xx with a status line."""
        status = HTTPStatus(code)
        headers = {"Connection": "close"}
        if status == HTTPStatus.HTTP_VERSION_NOT_SUPPORTED:
            status = HTTPStatus.BAD_REQUEST  # a client's malformed request is a 4xx, never a 5xx
        elif status == HTTPStatus.NOT_IMPLEMENTED:  # TRACE, CONNECT or an unknown method: 405 like PUT
            status = HTTPStatus.METHOD_NOT_ALLOWED
            headers["Allow"] = self._allowed()
        # Before the request line parsed, http.server assumes HTTP/0.9 and would send a bare body, no status line.
        self.request_version = self.protocol_version
        self.close_connection = True
        self._json(status, {"error": message or status.phrase}, headers)


class ExporterHTTPServer(ThreadingHTTPServer):
    """A thread per connection, so a slow client never blocks a scrape."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, exporter: Exporter, listen: ListenConfig) -> None:
        self.exporter = exporter
        try:
            super().__init__((listen.address, listen.port), Handler)
        except OSError as error:  # the port is taken, the address is not on this host, a port < 1024 without root
            where = f"{listen.address}:{listen.port}"
            raise ConfigError([f"listen: cannot listen on {where}: {error.strerror or error}"]) from None
        if listen.tls_cert_file is not None and listen.tls_key_file is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                context.load_cert_chain(str(listen.tls_cert_file), str(listen.tls_key_file))
                if listen.tls_client_ca_file is not None:
                    context.load_verify_locations(str(listen.tls_client_ca_file))
                    context.verify_mode = ssl.CERT_REQUIRED
            except OSError as error:  # ssl.SSLError is an OSError too: a file that is not PEM, a key that does not fit
                self.server_close()
                files = ", ".join(
                    str(f) for f in (listen.tls_cert_file, listen.tls_key_file, listen.tls_client_ca_file) if f
                )
                raise ConfigError([f"listen: cannot load the TLS files ({files}): {error.strerror or error}"]) from None
            self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up or timed out is routine; anything else is logged with its traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError | ssl.SSLError):
            log.debug("client %s: %s", client_address, error)
        else:
            log.exception("error while serving %s", client_address)

    @property
    def url(self) -> str:
        """The base URL the server answers on."""
        host, port = self.server_address[:2]
        scheme = "https" if isinstance(self.socket, ssl.SSLSocket) else "http"
        return f"{scheme}://{host!s}:{port}"


def serve_in_thread(exporter: Exporter, listen: ListenConfig) -> tuple[ExporterHTTPServer, threading.Thread]:
    """Start the HTTP server in a background thread."""
    # A scrape takes the interpreter lock several times (read, parse, write); while a check or the exposition
    # builder computes, each take waits up to the switch interval. Python's 5 ms made a cached 700 KB scrape
    # p50 44 ms / p99 240-350 ms next to two busy threads; 1 ms made it 6-14 / 64-95 ms (make bench-gil: bench/gil.py).
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    server = ExporterHTTPServer(exporter, listen)
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    return server, thread
