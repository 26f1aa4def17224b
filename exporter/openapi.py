"""The daemon's HTTP API as an OpenAPI 3.0 document, served at GET /openapi.json."""

from __future__ import annotations

from typing import Any

from exporter import __version__


def _ref(name: str) -> dict[str, Any]:
    """A reference to a schema in components."""
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(name: str) -> dict[str, Any]:
    """A component schema, or null."""
    return {"type": "object", "nullable": True, "allOf": [_ref(name)]}


def _obj(properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """An object schema with every listed property required."""
    return {"type": "object", "required": list(properties), "properties": properties, **extra}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A response with a JSON body."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _text(description: str, media_types: tuple[str, ...] = ("text/plain",)) -> dict[str, Any]:
    """A response with a text body."""
    return {"description": description, "content": {m: {"schema": {"type": "string"}} for m in media_types}}


def _error(name: str) -> dict[str, Any]:
    """A shared error response."""
    return {"$ref": f"#/components/responses/{name}"}


STRING = {"type": "string"}
NULLABLE_STRING = {"type": "string", "nullable": True}
INTEGER = {"type": "integer"}
NULLABLE_INTEGER = {"type": "integer", "nullable": True}
NUMBER = {"type": "number"}
NULLABLE_NUMBER = {"type": "number", "nullable": True}
BOOLEAN = {"type": "boolean"}
STATUS = {"type": "string", "enum": ["healthy", "degraded", "unhealthy"]}
MODE = {"type": "string", "enum": ["full", "sample", "incremental"]}

SCHEMAS: dict[str, Any] = {
    "Error": _obj(
        {"error": {"type": "string", "minLength": 1}},
        additionalProperties=False,
        description="The body of every 4xx: a message naming the problem.",
    ),
    "Ready": _obj(
        {"ready": BOOLEAN, "targets": {"type": "object", "additionalProperties": BOOLEAN}}, additionalProperties=False
    ),
    "BadRow": _obj(
        {
            "kind": {"type": "string", "enum": ["mismatch", "null", "error"]},
            "relation": STRING,
            "primary_key": {"type": "object", "additionalProperties": STRING},
            "stored_key": NULLABLE_INTEGER,
            "expected_key": NULLABLE_INTEGER,
            "error": NULLABLE_STRING,
        }
    ),
    "Verification": _obj(
        {
            "mode": MODE,
            "rows_checked": INTEGER,
            "mismatched": INTEGER,
            "null_keys": INTEGER,
            "expression_errors": INTEGER,
            "correct": INTEGER,
            "examples": {"type": "array", "items": _ref("BadRow")},
            "watermark": NULLABLE_STRING,
            "sample_percent": NULLABLE_NUMBER,
            "duration_seconds": NUMBER,
            "note": NULLABLE_STRING,
            "partitions": {
                "type": "array",
                "description": (
                    "Full passes: the path each leaf took (loose-index-scan, group-by, known-values or row-by-row)"
                    " and why."
                ),
                "items": {"type": "object"},
            },
            "bad_pairs": {
                "type": "array",
                "description": "Every bad (relation, stored key, source values) group with its row count, capped.",
                "items": {"type": "object"},
            },
            "bad_pairs_total": INTEGER,
            "rows_estimated": INTEGER,
        }
    ),
    "Implementation": _obj(
        {
            "server_version_num": INTEGER,
            "server_version": STRING,
            "major": INTEGER,
            "table": STRING,
            "shape": {"type": "string", "enum": ["missing", "plain", "list", "hash", "range", "expression"]},
            "method": {"type": "string", "enum": ["generated", "trigger", "check", "expression", "hash", "none"]},
            "partitions": {"type": "array", "items": STRING},
            "partition_count": INTEGER,
            "optimal": BOOLEAN,
            "formula_overflow": BOOLEAN,
            "reason": STRING,
        },
        description="What the catalog says about the table; more fields than listed here may appear.",
    ),
    "Distribution": _obj(
        {
            "source": {"type": "string", "enum": ["estimate", "exact"]},
            "partitioned": BOOLEAN,
            "partitions": {
                "type": "array",
                "items": _obj(
                    {
                        "name": STRING,
                        "rows": NULLABLE_INTEGER,
                        "is_default": BOOLEAN,
                        "heap_bytes": NULLABLE_INTEGER,
                        "index_bytes": NULLABLE_INTEGER,
                        "toast_bytes": NULLABLE_INTEGER,
                        "dead_rows": NULLABLE_INTEGER,
                        "last_vacuum": NULLABLE_NUMBER,
                        "last_analyze": NULLABLE_NUMBER,
                        "stale": BOOLEAN,
                    }
                ),
            },
            "total_rows": NULLABLE_INTEGER,
            "default_rows": NULLABLE_INTEGER,
            "partition_count": INTEGER,
            "active": INTEGER,
            "empty": INTEGER,
            "unknown": INTEGER,
            "avg": NULLABLE_NUMBER,
            "max": NULLABLE_INTEGER,
            "min": NULLABLE_INTEGER,
            "skew_ratio": NULLABLE_NUMBER,
            "cv": NULLABLE_NUMBER,
            "hot": INTEGER,
            "cold": INTEGER,
            "heap_bytes": NULLABLE_INTEGER,
            "index_bytes": NULLABLE_INTEGER,
            "toast_bytes": NULLABLE_INTEGER,
            "bytes_avg": NULLABLE_NUMBER,
            "bytes_max": NULLABLE_INTEGER,
            "bytes_skew_ratio": NULLABLE_NUMBER,
            "bytes_cv": NULLABLE_NUMBER,
            "stale": INTEGER,
        }
    ),
    "CheckState": _obj(
        {
            "success": BOOLEAN,
            "error": NULLABLE_STRING,
            "duration_seconds": NUMBER,
            "last_success_at": NULLABLE_NUMBER,
            "scan": _nullable("ScanSource"),
        }
    ),
    "ScanSource": _obj(
        {
            "in_recovery": BOOLEAN,
            "replay_lag_seconds": NULLABLE_NUMBER,
            "replay_lag_bytes": NULLABLE_INTEGER,
            "conflict_retries": INTEGER,
        },
        description="Where a check on the target's scan_dsn ran: is it a standby, how far its replay was behind "
        "when the scan started, and how many attempts a recovery conflict canceled first.",
    ),
    "TableHealth": _obj(
        {
            "target": STRING,
            "table": STRING,
            "status": STATUS,
            "target_up": BOOLEAN,
            "implementation": _nullable("Implementation"),
            "verification": _nullable("Verification"),
            "verifications": {
                "type": "object",
                "additionalProperties": _ref("Verification"),
                "description": "Every mode that has run, by mode.",
            },
            "distribution": _nullable("Distribution"),
            "checks": {
                "type": "object",
                "additionalProperties": _ref("CheckState"),
                "description": "The last run of every check, by check name.",
            },
        }
    ),
    "DiscoveredTable": _obj(
        {
            "table": STRING,
            "key_column": STRING,
            "source": STRING,
            "maintained_by": STRING,
            "formula": STRING,
            "monotonic_column": NULLABLE_STRING,
            "incremental": STRING,
        },
        description="A table `tables: auto` watches: what keeps its key, and the column incremental verification "
        "uses (null: off) with the reason.",
    ),
    "Discovery": _obj(
        {
            "target": STRING,
            "success": BOOLEAN,
            "error": NULLABLE_STRING,
            "last_success_at": NULLABLE_NUMBER,
            "tables": {"type": "array", "items": _ref("DiscoveredTable")},
            "skipped": {
                "type": "array",
                "items": _obj({"table": STRING, "reason": STRING}),
                "description": "Keyed tables left out, and why.",
            },
        },
        description="A `tables: auto` target's last discovery; on failure, the tables found last and the error.",
    ),
    "Health": _obj(
        {
            "status": STATUS,
            "tables": {"type": "array", "items": _ref("TableHealth")},
            "discovery": {
                "type": "array",
                "items": _ref("Discovery"),
                "description": "Each `tables: auto` target's last discovery (none when a table is selected).",
            },
        }
    ),
    "VerifyRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"target": STRING, "table": STRING, "mode": {**MODE, "default": "full"}},
        "description": "All fields optional; target and table may be left out when only one table matches.",
    },
    "VerifyResult": _obj(
        {
            "target": STRING,
            "table": STRING,
            "success": BOOLEAN,
            "error": NULLABLE_STRING,
            "verification": _nullable("Verification"),
        }
    ),
}

RESPONSES: dict[str, Any] = {
    name: _json(description, _ref("Error"))
    for name, description in {
        "BadRequest": "A malformed request: the message names the problem.",
        "NotFound": "No such target or table.",
        "Unauthorized": "Missing or wrong bearer token.",
        "Conflict": "A verification of that table is already running.",
        "LengthRequired": "A chunked body: send a Content-Length.",
        "PayloadTooLarge": "A body over 64 KiB.",
    }.items()
}
RESPONSES["Unauthorized"]["headers"] = {
    "WWW-Authenticate": {"schema": {"type": "string", "enum": ["Bearer"]}, "required": True}
}

QUERY = [
    {
        "name": "format",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "enum": ["text", "json"], "default": "text"},
    },
    {
        "name": "target",
        "in": "query",
        "required": False,
        "schema": STRING,
        "description": "Only this target; an unknown one gives 404.",
    },
    {
        "name": "table",
        "in": "query",
        "required": False,
        "schema": STRING,
        "description": "Only this table (schema.table); an unknown one gives 404.",
    },
]
ACCEPT_ENCODING = {
    "name": "Accept-Encoding",
    "in": "header",
    "required": False,
    "schema": STRING,
    "description": "With gzip, the body is gzip-compressed and Content-Encoding says so.",
}
QUERY_ERRORS = {"400": _error("BadRequest"), "404": _error("NotFound")}
REPORT = {
    "200": {
        "description": "The text report, or its JSON twin with format=json.",
        "content": {"text/plain": {"schema": STRING}, "application/json": {"schema": _ref("Health")}},
    },
    **QUERY_ERRORS,
}


def _get(summary: str, responses: dict[str, Any], parameters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A GET path item (HEAD is answered too, without the body)."""
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if parameters:
        operation["parameters"] = parameters
    return {"get": operation}


SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "partkey-exporter",
        "version": __version__,
        "description": "The daemon's HTTP API. Every GET path answers HEAD too. Unknown paths give 404 and "
        "wrong methods 405 (with Allow), each with the Error body.",
    },
    "paths": {
        "/": _get(
            "The status page: every table's verdict with its reasons, the implementation and formula, bad rows with "
            "example keys, check freshness, and rows and bytes per partition as inline SVG charts. HTML built from "
            "the last snapshot (no SQL), no script, sent with a strict Content-Security-Policy.",
            {"200": _text("The status page.", ("text/html",))},
        ),
        "/metrics": _get(
            "The Prometheus exposition, from the last snapshot.",
            {
                "200": _text(
                    "Prometheus text format 0.0.4, or OpenMetrics (or text 1.0.0) when the Accept header asks for it; "
                    "the version in the content type follows the request.",
                    ("text/plain; version=0.0.4", "application/openmetrics-text; version=1.0.0"),
                )
            },
            [ACCEPT_ENCODING],
        ),
        "/probe": _get(
            "One target's part of the exposition (the multi-target pattern), from the last snapshot; never SQL.",
            {
                "200": _text(
                    "As /metrics, with only this target's series (and partkey_build_info).",
                    ("text/plain; version=0.0.4", "application/openmetrics-text; version=1.0.0"),
                ),
                **QUERY_ERRORS,
            },
            [
                {
                    "name": "target",
                    "in": "query",
                    "required": True,
                    "schema": {**STRING, "minLength": 1},
                    "description": "A configured target's name; missing or given twice gives 400, unknown 404.",
                },
                ACCEPT_ENCODING,
            ],
        ),
        "/healthz": _get("Liveness; never touches the database.", {"200": _text("Always `ok`.")}),
        "/readyz": _get(
            "Readiness: has every target had a successful check?",
            {
                "200": _json("Every target is ready.", _ref("Ready")),
                "503": _json("Some target has had no successful check yet.", _ref("Ready")),
            },
        ),
        "/report": _get("The health report.", REPORT, QUERY),
        "/admin/partition/health": _get(
            "The JSON health summary of every selected table.",
            {
                "200": _json("The overall status and every table's details.", _ref("Health")),
                **QUERY_ERRORS,
            },
            [{**QUERY[0], "description": "Accepted and checked, but the answer is always JSON."}, *QUERY[1:]],
        ),
        "/admin/partition/health/report": _get("The text health report (same as /report).", REPORT, QUERY),
        "/admin/partition/verify": {
            "post": {
                "summary": "Run a verification now; one at a time per table.",
                "security": [{"bearerAuth": []}, {}],
                "requestBody": {"required": False, "content": {"application/json": {"schema": _ref("VerifyRequest")}}},
                "responses": {
                    "200": _json("The verification ran.", _ref("VerifyResult")),
                    "400": _error("BadRequest"),
                    "401": _error("Unauthorized"),
                    "404": _json(
                        "No such target or table, several match, or incremental mode without monotonic_column.",
                        _ref("Error"),
                    ),
                    "409": _error("Conflict"),
                    "411": _error("LengthRequired"),
                    "413": _error("PayloadTooLarge"),
                    "502": _json(
                        "The verification failed on the database: success is false and error says why.",
                        _ref("VerifyResult"),
                    ),
                },
            }
        },
        "/openapi.json": _get(
            "This document.",
            {
                "200": _json(
                    "OpenAPI 3.0.", _obj({"openapi": STRING, "info": {"type": "object"}, "paths": {"type": "object"}})
                )
            },
        ),
    },
    "components": {
        "schemas": SCHEMAS,
        "responses": RESPONSES,
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": "Only when admin_token_env or admin_token_file is set; compared in constant time.",
            }
        },
    },
}
