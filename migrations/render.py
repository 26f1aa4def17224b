"""Print a plan for people (plan) or as a runnable psql script (plan --sql, offline mode)."""

from __future__ import annotations

from typing import Any

import psycopg

from migrations.options import Options, milliseconds
from migrations.steps import Plan, human_seconds


def plan_lines(conn: psycopg.Connection[Any], plan: Plan) -> list[str]:
    """Each step with its lock, whether it rewrites, its estimate, and its statements."""
    lines = [f"{plan.direction} plan, strategy {plan.strategy}: {plan.reason}"]
    if plan.estimate_basis:
        lines.append(plan.estimate_basis)
    lines += [f"warning: {w}" for w in plan.warnings]
    lines += [f"depends on the key column: {d['kind']} {d['name']}: {d['action']}" for d in plan.dependents]
    if not plan.steps:
        lines.append("nothing to do")
        return lines
    for number, step in enumerate(plan.steps, start=1):
        lines.append(f"{number}. {step.name}: {step.title}")
        lines.append(f"   lock: {step.lock}")
        lines.append(
            f"   rewrites the table: {'yes' if step.rewrites else 'no'}; "
            f"estimated duration: {human_seconds(step.estimate_seconds)} "
            f"(likely {plan.likely.spread(step.estimate_seconds)}); "
            f"timeout: {'scan limit' if step.timeout == 'scan' else 'statement_timeout'}"
        )
        if step.note:
            lines.append(f"   note: {step.note}")
        lines += [f"   SQL: {s.as_string(conn)};" for s in step.statements]
    lines.append(
        f"estimated total: {human_seconds(plan.total_seconds())}, likely {plan.likely.spread(plan.total_seconds())} "
        f"({plan.likely.says()}; rates measured on PostgreSQL 18 on a 2-vCPU VM, see docs/migrate.md; lock waits "
        "not included)"
    )
    return lines


def plan_script(conn: psycopg.Connection[Any], plan: Plan, options: Options) -> str:
    """A psql script: one transaction per step, VALIDATE and scans under the scan limit, stop on error."""
    ddl_timeout = milliseconds(options.statement_timeout)
    scan_timeout = milliseconds(options.scan_timeout)
    out = [
        f"-- partkey-migrate {plan.direction} for {options.spec.label}, strategy {plan.strategy}",
        f"-- {plan.reason}",
        "-- Offline mode: no lock retries and no state table; psql stops at the first error:",
        "--   psql -v ON_ERROR_STOP=1 -f this.sql",
        *[f"-- WARNING: {w}" for w in plan.warnings],
        "\\set ON_ERROR_STOP on",
        f"SET lock_timeout = '{milliseconds(options.lock_timeout)}';",
        "",
    ]
    if not plan.steps:
        out.append("-- nothing to do")
    for number, step in enumerate(plan.steps, start=1):
        out.append(f"-- step {number}: {step.name}: {step.title}")
        out.append(
            f"-- lock: {step.lock}; rewrites: {'yes' if step.rewrites else 'no'}; "
            f"estimate: {human_seconds(step.estimate_seconds)}"
        )
        out.append(f"SET statement_timeout = '{scan_timeout if step.timeout == 'scan' else ddl_timeout}';")
        if step.kind == "backfill":
            out.append("-- batches, each committed (COMMIT inside DO works outside a transaction block, PG 11+)")
            out += [
                "DO $partkey$ DECLARE n bigint; BEGIN LOOP "
                f"{s.as_string(conn)}; GET DIAGNOSTICS n = ROW_COUNT; EXIT WHEN n = 0; COMMIT; "
                "END LOOP; END $partkey$;"
                for s in step.statements
            ]
        elif step.kind == "concurrent":
            out.append("-- CREATE INDEX CONCURRENTLY cannot run inside a transaction block")
            out += [f"{s.as_string(conn)};" for s in step.statements]
        else:
            out.append("BEGIN;")
            out += [f"{s.as_string(conn)};" for s in step.statements]
            out.append("COMMIT;")
        out.append("")
    return "\n".join(out) + "\n"
