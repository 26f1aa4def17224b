"""The configuration reference: every key of the pydantic models, with its type, default and description."""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from exporter._docsgen.tables import table
from exporter.config import Config, parse_duration

_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}
_CONSTRAINTS = {
    annotated_types.Ge: ("≥", "ge"),
    annotated_types.Gt: (">", "gt"),
    annotated_types.Le: ("≤", "le"),
    annotated_types.Lt: ("<", "lt"),
    annotated_types.MinLen: ("length ≥", "min_length"),
    annotated_types.MaxLen: ("length ≤", "max_length"),
}


def duration_text(seconds: float) -> str:
    """Seconds in the config's own duration syntax: 300 -> 5m."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{round(seconds * 1000)}ms"


def _is_duration(metadata: list[Any]) -> bool:
    """Whether a field is a Duration (parsed by parse_duration)."""
    return any(getattr(item, "func", None) is parse_duration for item in metadata)


def type_text(annotation: Any, metadata: list[Any]) -> str:
    """A reader's name for a field's type, with its bounds."""
    if _is_duration(metadata):
        return "duration"
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        inner, *extra = typing.get_args(annotation)
        return type_text(inner, [*metadata, *extra])
    bounds = [
        f"{symbol} {getattr(item, attr)}"
        for item in metadata
        for kind, (symbol, attr) in _CONSTRAINTS.items()
        if isinstance(item, kind)
    ]
    suffix = f" ({', '.join(bounds)})" if bounds else ""
    if origin is typing.Literal:
        return " or ".join(f"`{value}`" for value in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        parts = [type_text(arg, metadata) for arg in typing.get_args(annotation) if arg is not type(None)]
        return " or ".join(parts) + ", optional"
    if origin is list:
        (item,) = typing.get_args(annotation)
        return f"list of {type_text(item, [])}{suffix}"
    if origin is dict:
        key, value = typing.get_args(annotation)
        return f"map of {type_text(key, [])} to {type_text(value, [])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    return _NAMES.get(annotation, getattr(annotation, "__name__", str(annotation))) + suffix


def default_text(value: Any, metadata: list[Any]) -> str:
    """A default as it would be written in YAML."""
    if value is PydanticUndefined:
        return "required"
    if value is None:
        return "unset"
    if _is_duration(metadata) and isinstance(value, int | float):
        return f"`{duration_text(float(value))}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == {}:
        return "`{}`"
    return f"`{value}`"


def _default(field: FieldInfo) -> Any:
    """The field's default value, or PydanticUndefined."""
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return field.default


def _model_of(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The model a field holds, and whether it holds a list of them."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        if typing.get_origin(item) is typing.Annotated:  # a model with its own validator (tables: auto entries)
            item = typing.get_args(item)[0]
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item, True
    return None, False


def rows(model: type[BaseModel], prefix: str = "", instance: BaseModel | None = None) -> Iterator[list[str]]:
    """One row per key, nested models expanded with the defaults they really get."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        value = getattr(instance, name) if instance is not None else _default(field)
        nested, is_list = _model_of(field.annotation)
        description = field.description or ""
        if nested is not None and is_list:
            yield [
                f"`{key}`",
                type_text(field.annotation, field.metadata),
                default_text(value, field.metadata),
                description,
            ]
            yield from rows(nested, f"{key}[].")
        elif nested is not None:
            yield [f"`{key}`", "mapping", "see below", description]
            yield from rows(nested, f"{key}.", value if isinstance(value, BaseModel) else None)
        else:
            yield [
                f"`{key}`",
                type_text(field.annotation, field.metadata),
                default_text(value, field.metadata),
                description,
            ]


def render() -> str:
    """The configuration table."""
    return table(["key", "type", "default", "what it does"], rows(Config))
