"""The HTTP API table, from the OpenAPI document the daemon serves (exporter/openapi.py)."""

from __future__ import annotations

from typing import Any

from exporter._docsgen.tables import table
from exporter.openapi import SPEC


def _response(spec: dict[str, Any], code: str, response: dict[str, Any]) -> str:
    """One status code and what it means, with shared responses resolved."""
    ref = response.get("$ref")
    if isinstance(ref, str):
        response = spec["components"]["responses"][ref.rsplit("/", 1)[1]]
    return f"{code}: {response['description']}"


def _parameters(operation: dict[str, Any]) -> str:
    """Query parameters and the request body, in one cell."""
    parts = []
    for parameter in operation.get("parameters", []):
        text = f"`{parameter['name']}`"
        if "enum" in parameter["schema"]:
            text += " (" + ", ".join(f"`{value}`" for value in parameter["schema"]["enum"]) + ")"
        parts.append(text)
    if "requestBody" in operation:
        parts.append("optional JSON body `VerifyRequest`")
    if "security" in operation:
        parts.append("bearer token when one is configured")
    return "; ".join(parts) or "none"


def render(spec: dict[str, Any] = SPEC) -> str:
    """One row per path and method."""
    rows = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            answers = "; ".join(_response(spec, code, body) for code, body in operation["responses"].items())
            rows.append([f"`{method.upper()} {path}`", operation["summary"], _parameters(operation), answers])
    intro = str(spec["info"]["description"])
    return intro + "\n\n" + table(["request", "what", "takes", "answers"], rows)
