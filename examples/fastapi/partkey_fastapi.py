"""FastAPI: the daemon's admin endpoints as an APIRouter over an embedded PartitionImplementationDetector.

The router is a thin adapter: the token check, query and body parsing, status codes and response bodies all come
from exporter.admin, the module the daemon's own HTTP server uses. Run the example app with

    PARTKEY_DSN=postgresql://... PARTKEY_ADMIN_TOKEN=secret uvicorn --factory partkey_fastapi:create_app
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from exporter import AsyncPartitionImplementationDetector, PartitionImplementationDetector
from exporter.admin import AdminError, HealthSource, health_json, report_query, report_text, select, verify
from exporter.http import MAX_BODY_BYTES

OTHER_METHODS = ["PUT", "DELETE", "PATCH", "OPTIONS"]


def _json(status: int, data: Any, headers: dict[str, str] | None = None) -> Response:
    """A JSON response serialised exactly as the daemon serialises it."""
    body = json.dumps(data, indent=2, default=str).encode() + b"\n"
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _error(error: AdminError, allow: str | None = None) -> Response:
    """The daemon's error body, with WWW-Authenticate on 401 and Allow on 405."""
    headers = {"WWW-Authenticate": "Bearer"} if error.status == HTTPStatus.UNAUTHORIZED else None
    if allow is not None:
        headers = {"Allow": allow}
    return _json(error.status, {"error": error.message}, headers)


def _query(request: Request) -> tuple[str, str | None, str | None]:
    """format, target and table, every repeat kept so report_query can refuse it as the daemon does."""
    params: dict[str, list[str]] = {}
    for name, value in request.query_params.multi_items():
        params.setdefault(name, []).append(value)
    return report_query(params)


async def _body(request: Request) -> bytes:
    """The request body, refused past the daemon's 64 KiB limit without reading more than that."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise AdminError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body larger than {MAX_BODY_BYTES} bytes")
    return body


def partition_health_router(
    source: HealthSource | AsyncPartitionImplementationDetector, prefix: str = "/admin/partition"
) -> APIRouter:
    """GET {prefix}/health, GET {prefix}/health/report and POST {prefix}/verify, as the daemon serves them."""
    health_source: HealthSource = source.sync if isinstance(source, AsyncPartitionImplementationDetector) else source
    router = APIRouter(prefix=prefix, tags=["partition health"])

    # Plain `def` endpoints: FastAPI runs them in its thread pool, so a check never blocks the event loop.
    @router.api_route("/health", methods=["GET", "HEAD"])
    def health(request: Request) -> Response:
        """Overall status and every table's details (the checks re-run when older than cache_seconds)."""
        try:
            _format, target, table = _query(request)
            return _json(HTTPStatus.OK, health_json(select(health_source, target, table)))
        except AdminError as error:
            return _error(error)

    @router.api_route("/health/report", methods=["GET", "HEAD"])
    def health_report(request: Request) -> Response:
        """The text health report, or its JSON twin with ?format=json."""
        try:
            fmt, target, table = _query(request)
            healths = select(health_source, target, table)
        except AdminError as error:
            return _error(error)
        if fmt == "json":
            return _json(HTTPStatus.OK, health_json(healths))
        return Response(report_text(healths), media_type="text/plain; charset=utf-8")

    @router.post("/verify")
    async def verify_keys(request: Request) -> Response:
        """Run a verification now; 401 without the token, 409 while one is running, 502 when it failed."""
        try:
            body = await _body(request)
            status, payload = await run_in_threadpool(verify, health_source, request.headers.get("authorization"), body)
        except AdminError as error:
            return _error(error)
        return _json(status, payload)

    # Wrong methods get the daemon's 405 body and Allow header rather than FastAPI's default.
    def not_allowed(allow: str) -> Any:
        def endpoint(request: Request) -> Response:
            path = request.url.path
            if request.method in {"GET", "HEAD"}:
                message = f"{path} takes POST"
            elif request.method == "POST":
                message = f"{path} does not take POST"
            else:
                message = f"method {request.method} not allowed"
            return _error(AdminError(HTTPStatus.METHOD_NOT_ALLOWED, message), allow=allow)

        return endpoint

    router.add_api_route(
        "/verify", not_allowed("POST"), methods=["GET", "HEAD", *OTHER_METHODS], include_in_schema=False
    )
    for path in ("/health", "/health/report"):
        router.add_api_route(path, not_allowed("GET, HEAD"), methods=["POST", *OTHER_METHODS], include_in_schema=False)
    return router


def create_app(detector: PartitionImplementationDetector | None = None) -> FastAPI:
    """An app serving the router; without a detector, one from PARTKEY_DSN, PARTKEY_ADMIN_TOKEN and friends."""
    embedded = detector or PartitionImplementationDetector.from_env(target="app")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(embedded.close)  # the connection opened from the DSN

    app = FastAPI(title="partition health", lifespan=lifespan)
    app.include_router(partition_health_router(embedded))
    return app
