"""The admin API without a web framework: the daemon's HTTP server and the FastAPI router both use it."""

from __future__ import annotations

import hmac
import json
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, Literal, Protocol

from exporter.discovery import TargetDiscovery
from exporter.discovery import render_text as render_discovery
from exporter.report import TableHealth, overall_status, render_json, render_text
from exporter.snapshot import CheckResult
from exporter.verify import Mode

VERIFY_FIELDS = frozenset({"target", "table", "mode"})
REPORT_PARAMETERS = frozenset({"format", "target", "table"})


class AdminError(Exception):
    """A bad request, with the status and message the client gets."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class UnknownTableError(LookupError):
    """A request named a target or table that is not configured."""


class BusyError(Exception):
    """A verification of that table is already running."""


class HealthSource(Protocol):
    """What the admin API needs from the daemon or from an embedded detector."""

    admin_token: str | None

    def health(self, target: str | None = None, table: str | None = None) -> list[TableHealth]:
        """The health of the selected tables; raises UnknownTableError."""
        ...

    def verify_now(self, target: str | None, table: str | None, mode: Mode) -> CheckResult:
        """Run a verification now; raises UnknownTableError or BusyError."""
        ...


def authorize(authorization: str | None, token: str | None) -> None:
    """Check 'Authorization: Bearer <token>' in constant time when a token is configured."""
    if token is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise AdminError(HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token")


def report_query(params: dict[str, list[str]]) -> tuple[Literal["text", "json"], str | None, str | None]:
    """format, target and table from query parameters; each may appear once."""
    single: dict[str, str] = {}
    for name, values in params.items():
        if name not in REPORT_PARAMETERS:
            raise AdminError(HTTPStatus.BAD_REQUEST, f"unknown query parameter {name!r}")
        if len(values) != 1:
            raise AdminError(HTTPStatus.BAD_REQUEST, f"query parameter {name!r} given more than once")
        single[name] = values[0]
    fmt = single.get("format", "text")
    if fmt not in {"text", "json"}:
        raise AdminError(HTTPStatus.BAD_REQUEST, f"format must be text or json, got {fmt!r}")
    return ("json" if fmt == "json" else "text"), single.get("target"), single.get("table")


def select(source: HealthSource, target: str | None, table: str | None) -> list[TableHealth]:
    """The health of the selected tables; unknown names give 404."""
    try:
        return source.health(target, table)
    except UnknownTableError as error:
        raise AdminError(HTTPStatus.NOT_FOUND, str(error)) from None


def health_json(healths: list[TableHealth], discoveries: Sequence[TargetDiscovery] = ()) -> dict[str, Any]:
    """GET /admin/partition/health: overall status, every table's details, what discovery found and why."""
    return {
        "status": overall_status(healths),
        "tables": [render_json(h) for h in healths],
        "discovery": [result.to_dict() for result, _ in discoveries],
    }


def report_text(healths: list[TableHealth], discoveries: Sequence[TargetDiscovery] = ()) -> str:
    """GET /admin/partition/health/report: what discovery watches and why, then one block per table."""
    found = "".join(render_discovery(result, configured) for result, configured in discoveries)
    return found + "\n".join(render_text(h) for h in healths)


def parse_verify_body(body: bytes) -> tuple[str | None, str | None, Mode]:
    """An empty body or a JSON object with optional target, table and mode (default full)."""
    data: Any = {}
    if body:  # empty means the defaults; whitespace alone is not a JSON document (schemathesis sent "\n")
        try:
            data = json.loads(body.decode("utf-8"))
        except UnicodeDecodeError as error:
            message = f"body is not UTF-8: {error.reason} at byte {error.start}"
            raise AdminError(HTTPStatus.BAD_REQUEST, message) from None
        except json.JSONDecodeError as error:
            raise AdminError(HTTPStatus.BAD_REQUEST, f"body is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise AdminError(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
    unknown = sorted(set(data) - VERIFY_FIELDS)
    if unknown:
        raise AdminError(HTTPStatus.BAD_REQUEST, f"unknown field(s) in body: {', '.join(unknown)}")
    for name in sorted(VERIFY_FIELDS & set(data)):
        if not isinstance(data[name], str):
            raise AdminError(HTTPStatus.BAD_REQUEST, f"field {name!r} must be a string")
    mode = data.get("mode", "full")
    if mode not in {"full", "sample", "incremental"}:
        raise AdminError(HTTPStatus.BAD_REQUEST, f"mode must be full, sample or incremental, got {mode!r}")
    return data.get("target"), data.get("table"), mode


def verify(source: HealthSource, authorization: str | None, body: bytes) -> tuple[HTTPStatus, dict[str, Any]]:
    """POST /admin/partition/verify: token, body, one verification per table at a time."""
    authorize(authorization, source.admin_token)
    target, table, mode = parse_verify_body(body)
    try:
        result = source.verify_now(target, table, mode)
    except UnknownTableError as error:
        raise AdminError(HTTPStatus.NOT_FOUND, str(error)) from None
    except BusyError as error:
        raise AdminError(HTTPStatus.CONFLICT, str(error)) from None
    payload = result.payload.to_dict() if result.success and result.payload is not None else None
    status = HTTPStatus.OK if result.success else HTTPStatus.BAD_GATEWAY
    return status, {
        "target": result.target,
        "table": result.table,
        "success": result.success,
        "error": result.error,
        "verification": payload,
    }
