"""Build upgrade and downgrade plans from the catalog as it is now, so a resumed run skips what is done."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from exporter.introspect import Implementation
from exporter.pg.policy import Strategy
from migrations import dependents as column_dependents
from migrations import replica_identity, sqlgen
from migrations.catalog import (
    KeyTrigger,
    TableSize,
    as_json,
    column_number,
    column_ordinal,
    constraint_definitions,
    index_definitions,
    key_dependents,
    key_triggers,
    table_oid,
    table_size,
)
from migrations.downgrade_generated import generated_downgrade
from migrations.functions import capture_functions, captured_body, replace_body, restore_statements
from migrations.options import Options
from migrations.prebuild import plan_prebuilt
from migrations.probe import calibrate
from migrations.steps import (
    BRIEF_SECONDS,
    Plan,
    Statement,
    Step,
    human_bytes,
    human_seconds,
    index_estimate,
    rewrite_estimate,
    scan_estimate,
)

DEFAULT_TRIGGER = "set_partition_key"
DEFAULT_FUNCTION = "compute_partition_key"


def column_type(conn: psycopg.Connection[Any], oid: int, column: str) -> tuple[str, bool]:
    """The column's SQL type as format_type prints it, and whether it is NOT NULL."""
    row = conn.execute(
        "SELECT format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
        "WHERE attrelid = %s AND attname = %s AND NOT attisdropped",
        (oid, column),
    ).fetchone()
    return (str(row[0]), bool(row[1])) if row else ("integer", False)


def capture(conn: psycopg.Connection[Any], options: Options, impl: Implementation) -> dict[str, Any]:
    """What the table looks like before the upgrade: kept in the state table so downgrade can put it back."""
    spec = options.spec
    key_type, not_null = column_type(conn, table_oid(conn, spec), spec.key_column)
    triggers = key_triggers(conn, spec, impl)
    return {
        "triggers": as_json(triggers),
        "dependents": as_json(key_dependents(conn, spec)),
        "checks_before": [c.name for c in impl.checks],
        "key_position": column_ordinal(conn, table_oid(conn, spec), spec.key_column)[0],
        "column_count": impl.column_count,
        "key_type": key_type,
        "key_not_null": not_null,
        "indexes": index_definitions(conn, spec),
        "constraints": constraint_definitions(conn, spec),
        "method_before": impl.method,
        "trigger_location_before": impl.trigger_location,
        # Each key trigger function exactly as it was (pg_get_functiondef, owner, comment): downgrade restores it.
        "functions": capture_functions(conn, sorted({(t.function_schema, t.function_name) for t in triggers})),
    }


def _verify_step(options: Options, size: TableSize) -> Step:
    """Pre-verification: refuse to change anything while a row has a wrong key."""
    spec = options.spec
    return Step(
        name="pre-verify",
        title=(
            f"verify every row's {spec.key_column} against abs(hashtext({spec.source_column}::text) % {spec.modulus})"
        ),
        statements=(sqlgen.wrong_keys_guard(spec),),
        lock="ACCESS SHARE (reads only)",
        rewrites=False,
        estimate_seconds=scan_estimate(size),
        kind="verify",
        timeout="scan",
    )


def _parent_first(options: Options, impl: Implementation, mode: str) -> list[Statement]:
    """LOCK TABLE parent (then, by recursion, its partitions) first: the order DML takes them, so no deadlock.

    Under the step's lock_timeout the migration waits for the parent while holding nothing, and yields (retries
    later) instead of holding partitions that a writer, which already holds the parent, needs next.
    """
    if impl.shape != "list":
        return []
    return [sql.SQL("LOCK TABLE {} IN {} MODE").format(options.spec.table_ident, sql.SQL(mode))]


def _drop_triggers(
    conn: psycopg.Connection[Any], options: Options, triggers: list[KeyTrigger], oids: set[int]
) -> list[Statement]:
    """DROP TRIGGER for each key trigger, then its function when no other table's trigger calls it."""
    statements: list[Statement] = [sqlgen.drop_trigger(t.name, t.schema, t.relation) for t in triggers]
    for schema, name in sorted({(t.function_schema, t.function_name) for t in triggers}):
        row = conn.execute(
            "SELECT count(*) FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
            "JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = %s AND p.proname = %s AND NOT (t.tgrelid = ANY(%s))",
            (schema, name, list(oids)),
        ).fetchone()
        if row is not None and int(row[0]) == 0:
            statements.append(sqlgen.drop_function(schema, name))
    return statements


def upgrade_plan(
    conn: psycopg.Connection[Any], options: Options, impl: Implementation, strategy: Strategy, reason: str
) -> Plan:
    """The steps still needed to reach the strategy's end state."""
    if strategy == "check":
        return _check_plan(conn, options, impl, reason)
    if strategy == "generated":
        return _generated_plan(conn, options, impl, reason)
    return _keep_trigger_plan(conn, options, impl, reason)


def _check_plan(conn: psycopg.Connection[Any], options: Options, impl: Implementation, reason: str) -> Plan:
    """LIST by key: CHECK NOT VALID, VALIDATE in its own transaction, then drop the trigger(s)."""
    spec = options.spec
    size = calibrate(conn, spec, table_size(conn, spec))
    plan = Plan("upgrade", "check", reason)
    plan.based_on(size)
    safe = [c for c in impl.checks if not c.overflows]
    legacy = [c for c in impl.checks if c.overflows]
    triggers = key_triggers(conn, spec, impl)
    if safe and safe[0].validated and not triggers and not legacy:
        plan.reason = f"already done: CHECK {safe[0].name} is validated and no key trigger is left"
        return plan
    plan.steps.append(_verify_step(options, size))
    partitions = f"{spec.label} and its {impl.partition_count} partitions"
    taken = constraint_definitions(conn, spec)
    name = safe[0].name if safe else options.check_name
    if not safe and name in taken:
        # A legacy CHECK already has the usual name: add ours beside it and drop the old one at the end.
        name = f"{spec.table}_{spec.key_column}_safe_check"
    if not safe:
        plan.steps.append(
            Step(
                name="add-check",
                title=f"add CHECK {name} NOT VALID (new rows are checked at once, old rows later)",
                statements=(*_parent_first(options, impl, "ACCESS EXCLUSIVE"), sqlgen.add_check(spec, name)),
                lock=f"ACCESS EXCLUSIVE on {partitions}, brief (catalog only)",
                rewrites=False,
                estimate_seconds=BRIEF_SECONDS,
            )
        )
    if not safe or not safe[0].validated:
        plan.steps.append(
            Step(
                name="validate-check",
                title=f"VALIDATE CONSTRAINT {name} in its own transaction (scans every partition)",
                statements=(*_parent_first(options, impl, "SHARE UPDATE EXCLUSIVE"), sqlgen.validate_check(spec, name)),
                lock=f"SHARE UPDATE EXCLUSIVE on {partitions}: INSERT/UPDATE/DELETE keep flowing",
                rewrites=False,
                estimate_seconds=scan_estimate(size, "validate"),
                timeout="scan",
            )
        )
    if triggers or legacy:
        where = "the parent" if any(t.on_parent for t in triggers) else f"{len(triggers)} partitions"
        statements = _parent_first(options, impl, "ACCESS EXCLUSIVE")
        statements += _drop_triggers(conn, options, triggers, _tree_oids(impl, conn, options))
        statements += [sqlgen.drop_constraint(spec, c.name) for c in legacy]
        title = f"drop the key trigger from {where} and its function" if triggers else ""
        if legacy:
            title = (title + "; " if title else "") + "drop CHECKs with the overflowing formula"
        plan.steps.append(
            Step(
                name="drop-trigger",
                title=title,
                statements=tuple(statements),
                lock=f"ACCESS EXCLUSIVE on {partitions}, brief (catalog only)",
                rewrites=False,
                estimate_seconds=BRIEF_SECONDS,
                note="the application already sends the key: rows are routed before any trigger runs",
            )
        )
    return plan


def _tree_oids(impl: Implementation, conn: psycopg.Connection[Any], options: Options) -> set[int]:
    """OIDs of the table and all its partitions."""
    return {table_oid(conn, options.spec), *(p.oid for p in impl.partitions)}


def _generated_plan(conn: psycopg.Connection[Any], options: Options, impl: Implementation, reason: str) -> Plan:
    """Plain table, PG 12+: add the STORED column, verify it, then swap it in and rebuild the PK/indexes."""
    spec = options.spec
    size = calibrate(conn, spec, table_size(conn, spec))
    plan = Plan("upgrade", "generated", reason)
    plan.based_on(size)
    if impl.generated_kind == "stored" and not impl.formula_overflow:
        plan.reason = f"already done: {spec.key_column} is a STORED generated column with the safe formula"
        return plan
    if impl.generated_kind is not None:
        plan.reason = (
            f"{spec.key_column} is already a {impl.generated_kind} generated column; "
            "changing its expression is not handled by partkey-migrate"
        )
        plan.final_state = "refused"
        return plan
    oid = table_oid(conn, spec)
    others = column_dependents.find(conn, spec, spec.key_column)
    plan.dependents = [d.to_dict() for d in others]
    refusal = column_dependents.refusal(others, spec)
    if refusal is not None:
        # Before anything is rewritten: the swap's DROP COLUMN would fail on (or silently drop) these.
        plan.reason, plan.final_state = refusal, "refused"
        return plan
    key_type, not_null = column_type(conn, oid, spec.key_column)
    not_null_name = f"{spec.table}_{options.new_column}_not_null"[:63] if not_null else None
    dependents = key_dependents(conn, spec)
    prebuilt = plan_prebuilt(conn, options, dependents)
    plan.steps.append(_verify_step(options, size))
    if column_number(conn, oid, options.new_column) is None:
        estimate = rewrite_estimate(size)
        plan.warnings.append(
            f"ADD COLUMN ... GENERATED ... STORED rewrites {spec.label} and its indexes "
            f"({human_bytes(size.total_bytes)}) under ACCESS EXCLUSIVE: reads and writes wait about "
            f"{human_seconds(estimate)}; there is no lock-free way to add a stored generated column"
        )
        if estimate > options.statement_timeout:
            plan.warnings.append(
                f"the estimated rewrite ({human_seconds(estimate)}) exceeds --statement-timeout "
                f"({human_seconds(options.statement_timeout)}): raise it or the step will be cancelled"
            )
        plan.steps.append(
            Step(
                name="add-generated-column",
                title=f"add {options.new_column} {key_type} GENERATED ALWAYS AS (safe formula) STORED"
                + (" NOT NULL" if not_null else ""),
                statements=(sqlgen.add_generated_column(spec, options.new_column, key_type, not_null_name),),
                lock=f"ACCESS EXCLUSIVE on {spec.label} for the whole rewrite",
                rewrites=True,
                estimate_seconds=estimate,
            )
        )
    plan.steps.append(
        Step(
            name="verify-new-column",
            title=f"verify that {options.new_column} equals {spec.key_column} on every row",
            statements=(sqlgen.columns_guard(spec, spec.key_column, options.new_column),),
            lock="ACCESS SHARE (reads only)",
            rewrites=False,
            estimate_seconds=scan_estimate(size),
            kind="verify-new",
            timeout="scan",
        )
    )
    for item in prebuilt:
        plan.steps.append(
            Step(
                name=f"build-index:{item.dependent.name}",
                title=f"build {item.index} on {options.new_column} for {item.dependent.name}, concurrently",
                statements=(sql.SQL(item.create),),
                lock=f"SHARE UPDATE EXCLUSIVE on {spec.label}: reads and writes continue",
                rewrites=False,
                estimate_seconds=index_estimate(size, 1) * 2,  # a concurrent build scans the table twice
                kind="concurrent",
                timeout="scan",
                index=item.index,
                expected=item.expected,
            )
        )
    triggers = key_triggers(conn, spec, impl)
    # Views, policies, statistics and publication entries on the old column go first, or DROP COLUMN fails.
    statements = column_dependents.drops(others)
    statements += _drop_triggers(conn, options, triggers, {oid})
    statements += [
        sqlgen.drop_column(spec, spec.key_column),
        sqlgen.rename_column(spec, options.new_column, spec.key_column),
    ]
    attached = {item.dependent.name: item for item in prebuilt}
    rebuilt = []
    for dependent in dependents:
        if dependent.name in attached:
            statements.append(attached[dependent.name].attach(spec.table_ident, spec.schema))
        elif dependent.definition.startswith("NOT NULL") and not_null_name:
            # PG 18 names NOT NULL constraints: give the new column's the name the old column's had.
            statements.append(sqlgen.rename_constraint(spec, not_null_name, dependent.name))
        else:
            statements.append(dependent.recreate(spec.table_ident))
            rebuilt.append(dependent.name)
    identity = replica_identity.identity_index(conn, spec, dependents)
    statements += replica_identity.restore(spec, identity)
    for other in others:
        statements += other.statements  # privileges, comment, statistics target: as they were
    labels = [
        d.name if any(d.name.startswith(word) for word in d.kind.split()) else f"{d.kind} {d.name}" for d in others
    ]
    labels += [f"replica identity {identity}"] if identity else []
    names = ", ".join([d.name for d in dependents] + labels) or "none"
    plan.steps.append(
        Step(
            name="swap",
            title=(
                f"one transaction: drop the trigger and function, drop {spec.key_column}, rename "
                f"{options.new_column}, put back what DROP COLUMN removed ({names})"
            ),
            statements=tuple(statements),
            lock=f"ACCESS EXCLUSIVE on {spec.label}"
            + (f" while {', '.join(rebuilt)} are rebuilt" if rebuilt else ", brief (indexes were prebuilt)"),
            rewrites=False,
            estimate_seconds=BRIEF_SECONDS
            + index_estimate(size, len(rebuilt))
            + sum(d.scans for d in others) * scan_estimate(size),  # REFRESH of materialized views
            note=f"{spec.key_column} moves from column "
            f"{column_ordinal(conn, oid, spec.key_column)[0]} to the last position",
        )
    )
    return plan


def _keep_trigger_plan(conn: psycopg.Connection[Any], options: Options, impl: Implementation, reason: str) -> Plan:
    """Keep the trigger but give it the safe formula; add it where it is missing."""
    spec = options.spec
    plan = Plan("upgrade", "keep-trigger", reason, final_state="kept-trigger")
    triggers = key_triggers(conn, spec, impl)
    size = calibrate(conn, spec, table_size(conn, spec))
    plan.based_on(size)
    statements: list[Statement] = []
    body = sqlgen.function_body(spec).as_string(conn)
    functions = sorted({(t.function_schema, t.function_name) for t in triggers}) or [(spec.schema, DEFAULT_FUNCTION)]
    if not triggers or impl.formula_overflow:
        existing = capture_functions(conn, functions)
        for schema, name in functions:
            saved = existing.get(f"{schema}.{name}")
            if saved is None:
                statements.append(sqlgen.create_function(spec, schema, name, body))
            else:
                # CREATE OR REPLACE resets what it does not name: keep IMMUTABLE, SECURITY, SET, cost, as they are.
                statements.append(sql.SQL(replace_body(saved["definition"], body)))
    fschema, fname = functions[0]
    trigger_name = triggers[0].name if triggers else DEFAULT_TRIGGER
    for schema, relation in _missing_trigger_relations(impl, options, triggers):
        statements.append(sqlgen.create_trigger(trigger_name, schema, relation, fschema, fname))
    if not statements:
        plan.reason = "already done: the key trigger uses the safe formula everywhere"
        return plan
    plan.steps.append(_verify_step(options, size))
    plan.steps.append(
        Step(
            name="fix-trigger",
            title="CREATE OR REPLACE the trigger function with abs(hashtext(x) % n); add missing triggers",
            statements=tuple(statements),
            lock="none on the table for the function; SHARE ROW EXCLUSIVE for any trigger added",
            rewrites=False,
            estimate_seconds=BRIEF_SECONDS,
        )
    )
    return plan


def _function_is(conn: psycopg.Connection[Any], schema: str, name: str, definition: str) -> bool:
    """True when the function exists with exactly this pg_get_functiondef text."""
    current = capture_functions(conn, [(schema, name)]).get(f"{schema}.{name}")
    return current is not None and current["definition"] == definition


def _missing_trigger_relations(
    impl: Implementation, options: Options, triggers: list[KeyTrigger]
) -> list[tuple[str, str]]:
    """Where a trigger must be created: the parent (plain or PG 13+), else each partition that lacks one."""
    spec = options.spec
    if impl.shape == "plain" or impl.major >= 13:
        return [] if triggers else [(spec.schema, spec.table)]
    if any(t.on_parent for t in triggers):
        return []
    covered = {t.relation for t in triggers}
    return [(spec.schema, p.name) for p in impl.partitions if p.name not in covered]


def downgrade_plan(
    conn: psycopg.Connection[Any], options: Options, impl: Implementation, captured: dict[str, Any]
) -> Plan:
    """Back to the trigger (with the safe formula), whatever state the upgrade reached."""
    spec = options.spec
    plan = Plan("downgrade", "trigger", "back to the trigger", final_state="downgraded")
    saved = [KeyTrigger(**t) for t in captured.get("triggers", [])]
    trigger_name = saved[0].name if saved else DEFAULT_TRIGGER
    fschema, fname = (saved[0].function_schema, saved[0].function_name) if saved else (spec.schema, DEFAULT_FUNCTION)
    body = sqlgen.function_body(spec).as_string(conn)
    current = key_triggers(conn, spec, impl)
    oid = table_oid(conn, spec)
    saved_function = captured.get("functions", {}).get(f"{fschema}.{fname}")
    restore = saved_function is not None and not options.keep_safe_formula
    if impl.shape == "plain" and impl.generated_kind is not None:
        key_type = str(captured.get("key_type") or column_type(conn, oid, spec.key_column)[0])
        # The function comes back with its captured body (its own formula) unless --keep-safe-formula.
        restored_body = captured_body(saved_function["definition"]) if restore and saved_function else body
        trigger = (trigger_name, fschema, fname, restored_body)
        return generated_downgrade(conn, options, impl, captured, plan, trigger, key_type)
    if impl.shape == "plain" and column_number(conn, oid, options.new_column) is not None:
        plan.steps.append(
            Step(
                name="drop-new-column",
                title=f"drop the unfinished {options.new_column} column of an interrupted upgrade",
                statements=(sqlgen.drop_column(spec, options.new_column),),
                lock=f"ACCESS EXCLUSIVE on {spec.label}, brief (catalog only)",
                rewrites=False,
                estimate_seconds=BRIEF_SECONDS,
            )
        )
    statements: list[Statement] = []
    missing = _missing_trigger_relations(impl, options, current)
    if restore and saved_function is not None:
        if not _function_is(conn, fschema, fname, saved_function["definition"]):
            # Back exactly as captured, byte for byte (its formula too), then its owner and comment.
            user = str(conn.execute("SELECT current_user").fetchone()[0])  # type: ignore[index]
            statements += restore_statements(fschema, fname, saved_function, user)
        statements += [sqlgen.create_trigger(trigger_name, s, r, fschema, fname) for s, r in missing]
    elif missing or impl.formula_overflow:
        if saved_function is not None:
            # --keep-safe-formula: the captured function (IMMUTABLE, SECURITY, SET...) with the safe body.
            user = str(conn.execute("SELECT current_user").fetchone()[0])  # type: ignore[index]
            statements += restore_statements(fschema, fname, saved_function, user, body)
        else:
            statements.append(sqlgen.create_function(spec, fschema, fname, body))
        statements += [sqlgen.create_trigger(trigger_name, s, r, fschema, fname) for s, r in missing]
    if statements:
        where = "the parent" if len(missing) <= 1 else f"each of {len(missing)} partitions (PG 11/12)"
        plan.steps.append(
            Step(
                name="create-trigger",
                title=f"re-create {fschema}.{fname}() (safe formula) and trigger {trigger_name} on {where}",
                statements=(*_parent_first(options, impl, "SHARE ROW EXCLUSIVE"), *statements),
                lock=f"SHARE ROW EXCLUSIVE on {spec.label} and its partitions (blocks writes, not reads)",
                rewrites=False,
                estimate_seconds=BRIEF_SECONDS,
            )
        )
    kept = set(captured.get("checks_before", []))
    drops = [c for c in impl.checks if c.name not in kept and not c.overflows]
    if drops and impl.shape != "plain":
        plan.steps.append(
            Step(
                name="drop-check",
                title="drop the CHECK the upgrade added: " + ", ".join(c.name for c in drops),
                statements=(
                    *_parent_first(options, impl, "ACCESS EXCLUSIVE"),
                    *(sqlgen.drop_constraint(spec, c.name) for c in drops),
                ),
                lock=f"ACCESS EXCLUSIVE on {spec.label} and its partitions, brief (catalog only)",
                rewrites=False,
                estimate_seconds=BRIEF_SECONDS,
            )
        )
    if not plan.steps:
        plan.reason = "already done: the key trigger is in place"
    return plan
