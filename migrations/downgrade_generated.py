"""Online downgrade of the generated strategy: a plain copy of the key is filled in batches, then swapped in.

Steps, each resumable from the catalog: add the plain column with a trigger that keeps new and updated rows'
copy right; backfill old rows in batches; verify; prove NOT NULL with a validated CHECK; build the PK and
indexes on the copy concurrently; then one brief swap that also puts the key trigger back.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from exporter.introspect import Implementation
from migrations import dependents as column_dependents
from migrations import replica_identity, sqlgen
from migrations.catalog import Dependent, column_number, key_dependents, table_oid, table_size
from migrations.functions import restore_statements
from migrations.options import Options
from migrations.prebuild import plan_prebuilt
from migrations.probe import calibrate
from migrations.steps import (
    BRIEF_SECONDS,
    Plan,
    Statement,
    Step,
    backfill_estimate,
    index_estimate,
    scan_estimate,
)

SYNC_TRIGGER = "partkey_sync_old_key"


def _constraint_state(conn: psycopg.Connection[Any], oid: int, name: str) -> bool | None:
    """True/False for a validated/NOT VALID constraint of that name, None when absent."""
    row = conn.execute(
        "SELECT convalidated FROM pg_constraint WHERE conrelid = %s AND conname = %s", (oid, name)
    ).fetchone()
    return bool(row[0]) if row else None


def generated_downgrade(
    conn: psycopg.Connection[Any],
    options: Options,
    impl: Implementation,
    captured: dict[str, Any],
    plan: Plan,
    trigger: tuple[str, str, str, str],
    key_type: str,
) -> Plan:
    """The steps still needed to turn the generated column back into a plain one filled by the trigger."""
    spec = options.spec
    trigger_name, fschema, fname, body = trigger
    oid = table_oid(conn, spec)
    size = calibrate(conn, spec, table_size(conn, spec))
    plan.based_on(size)
    old = options.old_column
    sync_function = f"{spec.table}_partkey_sync"[:63]
    check = f"{spec.table}_{old}_not_null_check"[:63]
    not_null = bool(captured.get("key_not_null", True))
    saved = [Dependent(**d) for d in captured.get("dependents", [])] or key_dependents(conn, spec)
    current = key_dependents(conn, spec)
    others = column_dependents.find(conn, spec, spec.key_column, {SYNC_TRIGGER})
    plan.dependents = [d.to_dict() for d in others]
    refusal = column_dependents.refusal(others, spec)
    if refusal is not None:
        plan.reason, plan.final_state = refusal, "refused"
        return plan
    if column_number(conn, oid, old) is None:
        sync_body = sqlgen.sync_function_body(spec, old).as_string(conn)
        plan.steps.append(
            Step(
                name="add-plain-copy",
                title=f"add plain {old} {key_type} and a trigger that fills it on INSERT and UPDATE",
                statements=(
                    sqlgen.add_plain_column(spec, old, key_type),
                    sqlgen.create_function(spec, spec.schema, sync_function, sync_body),
                    sqlgen.create_sync_trigger(SYNC_TRIGGER, spec, sync_function),
                ),
                lock=f"ACCESS EXCLUSIVE on {spec.label}, brief (catalog only)",
                rewrites=False,
                estimate_seconds=BRIEF_SECONDS,
            )
        )
    plan.steps.append(
        Step(
            name="backfill",
            title=f"copy {spec.key_column} into {old}, {options.batch_size} rows per transaction "
            "(every row gets a new version: VACUUM afterwards)",
            statements=(sqlgen.backfill_batch(spec, old, options.batch_size),),
            lock="ROW EXCLUSIVE: only the rows of each batch are locked",
            rewrites=False,
            estimate_seconds=backfill_estimate(size),
            kind="backfill",
            columns=(spec.key_column, old),
        )
    )
    plan.steps.append(
        Step(
            name="verify-plain-copy",
            title=f"verify that {old} equals {spec.key_column} on every row",
            statements=(sqlgen.columns_guard(spec, spec.key_column, old),),
            lock="ACCESS SHARE (reads only)",
            rewrites=False,
            estimate_seconds=scan_estimate(size),
            kind="verify-new",
            timeout="scan",
            columns=(spec.key_column, old),
        )
    )
    state = _constraint_state(conn, oid, check)
    if not_null and state is None:
        plan.steps.append(
            Step(
                name="add-not-null-check",
                title=f"add CHECK ({old} IS NOT NULL) NOT VALID",
                statements=(sqlgen.add_not_null_check(spec, check, old),),
                lock=f"ACCESS EXCLUSIVE on {spec.label}, brief (catalog only)",
                rewrites=False,
                estimate_seconds=BRIEF_SECONDS,
            )
        )
    if not_null and not state:
        plan.steps.append(
            Step(
                name="validate-not-null-check",
                title=f"VALIDATE the NOT NULL check of {old}, so SET NOT NULL needs no scan",
                statements=(sqlgen.validate_check(spec, check),),
                lock=f"SHARE UPDATE EXCLUSIVE on {spec.label}: reads and writes continue",
                rewrites=False,
                estimate_seconds=scan_estimate(size),
                timeout="scan",
            )
        )
    prebuilt = plan_prebuilt(conn, options, current, target=old)
    for item in prebuilt:
        plan.steps.append(
            Step(
                name=f"build-index:{item.dependent.name}",
                title=f"build {item.index} on {old} for {item.dependent.name}, concurrently",
                statements=(sql.SQL(item.create),),
                lock=f"SHARE UPDATE EXCLUSIVE on {spec.label}: reads and writes continue",
                rewrites=False,
                estimate_seconds=index_estimate(size, 1) * 2,
                kind="concurrent",
                timeout="scan",
                index=item.index,
                expected=item.expected,
            )
        )
    statements: list[Statement] = [
        *column_dependents.drops(others),  # views, policies... on the generated column: re-created below
        sqlgen.drop_trigger(SYNC_TRIGGER, spec.schema, spec.table),
        sqlgen.drop_function(spec.schema, sync_function),
        sqlgen.drop_column(spec, spec.key_column),
        sqlgen.rename_column(spec, old, spec.key_column),
    ]
    if not_null:
        statements += [sqlgen.set_not_null(spec, spec.key_column), sqlgen.drop_constraint(spec, check)]
    attached = {item.dependent.name: item for item in prebuilt}
    auto_not_null = f"{spec.table}_{spec.key_column}_not_null"[:63]
    rebuilt = []
    for dependent in saved:
        if dependent.name in attached:
            statements.append(attached[dependent.name].attach(spec.table_ident, spec.schema))
        elif dependent.definition.startswith("NOT NULL"):
            if dependent.name != auto_not_null:  # PG 18: SET NOT NULL named it after the column
                statements.append(sqlgen.rename_constraint(spec, auto_not_null, dependent.name))
        else:
            statements.append(dependent.recreate(spec.table_ident))
            rebuilt.append(dependent.name)
    identity = replica_identity.identity_index(conn, spec, current)
    statements += replica_identity.restore(spec, identity)
    for other in others:
        statements += other.statements  # privileges, comment, statistics target: as they were
    saved_function = captured.get("functions", {}).get(f"{fschema}.{fname}")
    if saved_function is not None:
        # As captured before the upgrade: volatility, SECURITY, SET, owner, comment and privileges; its own body
        # byte for byte, or the safe one under --keep-safe-formula.
        user = str(conn.execute("SELECT current_user").fetchone()[0])  # type: ignore[index]
        safe_body = body if options.keep_safe_formula else None
        statements += restore_statements(fschema, fname, saved_function, user, safe_body)
    else:
        statements.append(sqlgen.create_function(spec, fschema, fname, body))
    statements.append(sqlgen.create_trigger(trigger_name, spec.schema, spec.table, fschema, fname))
    plan.steps.append(
        Step(
            name="swap-back",
            title=(
                f"one transaction: drop the generated column, rename {old}, SET NOT NULL (proved by the CHECK), "
                f"attach {', '.join(d.name for d in saved) or 'no index'}"
                + (f", replica identity {identity}" if identity else "")
                + f", re-create trigger {trigger_name}"
            ),
            statements=tuple(statements),
            lock=f"ACCESS EXCLUSIVE on {spec.label}"
            + (f" while {', '.join(rebuilt)} are rebuilt" if rebuilt else ", brief (indexes were prebuilt)"),
            rewrites=False,
            estimate_seconds=BRIEF_SECONDS + index_estimate(size, len(rebuilt)),
            note=f"{spec.key_column} ends up as the last column; its values are copied, not recomputed",
        )
    )
    return plan
