"""The status report: version, shape, how the key is kept, overflow, state, what upgrade would do."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import psycopg

from exporter.formula_report import formula_lines
from exporter.pg.policy import GENERATED_NOT_PARTITION_KEY, choose
from migrations import dependents as column_dependents
from migrations.catalog import column_ordinal, table_oid
from migrations.options import Options
from migrations.runner import inspect, interrupted_downgrade
from migrations.state import StateStore


def status(conn: psycopg.Connection[Any], options: Options) -> dict[str, Any]:
    """Everything the status command shows, as a JSON-ready dictionary (reads only)."""
    impl = inspect(conn, options)
    state = StateStore(conn, options).read()
    choice = choose(impl, "auto")
    refusal = interrupted_downgrade(state, options)
    if impl.generated_kind:
        implementation = f"generated column ({impl.generated_kind}): {impl.generated_expression}"
    elif impl.method == "trigger":
        where = "the parent" if impl.trigger_location == "parent" else "each partition"
        names = sorted({f"{t.name} -> {t.function}()" for t in impl.triggers})
        implementation = f"trigger on {where}: {', '.join(names)}" + ("" if impl.trigger_enabled else " (DISABLED)")
        if impl.partitions_missing_trigger:
            implementation += f"; missing on {', '.join(impl.partitions_missing_trigger)}"
    elif impl.method == "check":
        implementation = "CHECK: " + "; ".join(
            f"{c.name} {c.definition}{'' if c.validated else ' NOT VALID'}" for c in impl.checks
        )
    else:
        implementation = {"expression": "expression partitioning", "hash": "hash partitioning"}.get(
            impl.method, "nothing keeps the key right"
        )
    extra_checks = [c.name for c in impl.checks] if impl.method != "check" else []
    ordinal, count = column_ordinal(conn, table_oid(conn, options.spec), options.spec.key_column)
    position = f"{ordinal} of {count}"
    if state and state.captured.get("key_position") and state.captured["key_position"] != ordinal:
        position += f" (was {state.captured['key_position']} before the migration: the swap moves it last)"
    shape: str = impl.shape
    if impl.shape == "list":
        shape = f"partitioned by {impl.partition_key}, {impl.partition_count} partitions" + (
            " including DEFAULT" if impl.has_default_partition else ""
        )
    strategy = choice.strategy or "refused"
    others = []
    for dependent in column_dependents.find(conn, options.spec, options.spec.key_column):
        entry = dependent.to_dict()
        if strategy != "generated" and not (state and state.strategy == "generated"):
            entry["action"] = f"untouched: the {strategy} strategy keeps the column"
        others.append(entry)
    return {
        "table": impl.table,
        "key_column_dependents": others,
        "postgres": f"{impl.server_version} (major {impl.major})",
        "shape": shape,
        "implementation": implementation,
        "other_key_checks": extra_checks,
        "key_column": options.spec.key_column,
        "key_column_position": position,
        "formula_overflow": impl.formula_overflow,
        "optimal": impl.optimal,
        "optimal_reason": impl.reason,
        "generated_column_possible": (False if impl.shape != "plain" else impl.major >= 12),
        "generated_column_note": (
            GENERATED_NOT_PARTITION_KEY
            if impl.shape != "plain"
            else ("GENERATED columns need PostgreSQL 12" if impl.major < 12 else "possible (STORED)")
        ),
        "migration_state": state.status if state else "not started",
        "migration_strategy": state.strategy if state else None,
        "migration_steps_done": state.steps if state else [],
        "migration_updated_at": state.updated_at if state else None,
        "upgrade_strategy": "refused" if refusal else (choice.strategy or "refused"),
        "upgrade_reason": refusal or choice.reason,
        # The same formula facts as partkey-exporter report: each place, which disagree, what follows.
        "formulas": impl.formulas.to_dict() if impl.formulas is not None else None,
        "schema_formula_overflows": [asdict(p) for p in impl.schema_overflows],
        "formula_report": formula_lines(impl),
    }


def lines(report: dict[str, Any]) -> list[str]:
    """The report as aligned 'label: value' lines."""
    labels = [
        ("table", "table"),
        ("postgres", "PostgreSQL"),
        ("shape", "shape"),
        ("implementation", "key maintained by"),
        ("key_column_position", "key column position"),
        ("formula_overflow", "INT_MIN overflow in formula"),
        ("optimal", "optimal"),
        ("optimal_reason", "why"),
        ("generated_column_note", "generated column"),
        ("migration_state", "migration state"),
        ("migration_steps_done", "steps done"),
        ("upgrade_strategy", "upgrade would use"),
        ("upgrade_reason", "because"),
    ]
    result = []
    for key, label in labels:
        value = report[key]
        if isinstance(value, bool):
            value = "yes" if value else "no"
        elif isinstance(value, list):
            value = ", ".join(value) or "none"
        result.append(f"{label + ':':<30} {value}")
    for dependent in report["key_column_dependents"]:
        result.append(
            f"{'depends on the key column:':<30} {dependent['kind']} {dependent['name']}: {dependent['action']}"
        )
    if report["other_key_checks"]:
        result.append(f"{'other key CHECKs:':<30} {', '.join(report['other_key_checks'])}")
    if report.get("formula_report"):
        result += ["key formulas:", *report["formula_report"]]
    return result
