"""Run a plan: pre-verify, then each step in its own lock-retried transaction, recorded in the state table."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from exporter.introspect import Implementation, TableNotFoundError, detect
from exporter.pg.locks import retry_lock_timeouts
from exporter.pg.policy import Requested, choose
from migrations import measure as measuring
from migrations import progress, sqlgen
from migrations.connect import UsageError
from migrations.errors import Outcome, RefusedError
from migrations.options import Options
from migrations.plans import capture, downgrade_plan, upgrade_plan
from migrations.prebuild import index_state
from migrations.retry import backoff, with_lock_retries
from migrations.runlock import run_lock
from migrations.state import State, StateStore
from migrations.steps import Plan, Step, human_seconds
from migrations.verification import describe, scan_limits, verify_full

log = logging.getLogger("partkey-migrate")
Out = Callable[[str], None]


def inspect(conn: psycopg.Connection[Any], options: Options) -> Implementation:
    """detect(), with a missing table or key column turned into one clear usage error."""
    try:
        impl = detect(conn, options.spec)
    except TableNotFoundError:
        raise UsageError(f"table {options.spec.label} does not exist in database {conn.info.dbname!r}") from None
    if not impl.key_column_exists:
        raise UsageError(f"table {options.spec.label} has no column {options.spec.key_column!r} (--key-column)")
    return impl


def build_upgrade(conn: psycopg.Connection[Any], options: Options, requested: Requested) -> tuple[Implementation, Plan]:
    """The upgrade plan for the table as it is now; RefusedError when no strategy fits."""
    impl = inspect(conn, options)
    choice = choose(impl, requested)
    if choice.strategy is None:
        raise RefusedError(choice.reason)
    plan = upgrade_plan(conn, options, impl, choice.strategy, choice.reason)
    if plan.final_state == "refused":
        raise RefusedError(plan.reason)
    return impl, plan


def build_downgrade(conn: psycopg.Connection[Any], options: Options) -> tuple[Implementation, Plan]:
    """The downgrade plan, using what the upgrade captured when there is a record."""
    impl = inspect(conn, options)
    state = StateStore(conn, options).read()
    refusal = never_upgraded(impl, state, options)
    if refusal is not None:
        raise RefusedError(refusal)
    plan = downgrade_plan(conn, options, impl, state.captured if state else {})
    if plan.final_state == "refused":
        raise RefusedError(plan.reason)
    return impl, plan


def never_upgraded(impl: Implementation, state: State | None, options: Options) -> str | None:
    """Why downgrade refuses on a table partkey-migrate never upgraded (it would only rewrite the trigger)."""
    if state is None and impl.method == "trigger":
        return (
            f"{options.spec.label} was never upgraded by partkey-migrate (no record in its state table) and a "
            "trigger keeps the key: there is nothing to downgrade. Nothing was changed. To fix the trigger's "
            "formula, run `partkey-migrate upgrade --strategy keep-trigger`"
        )
    return None


def upgrade(
    conn: psycopg.Connection[Any],
    options: Options,
    requested: Requested = "auto",
    *,
    dry_run: bool = False,
    measure: bool = False,
    out: Out = print,
) -> Outcome:
    """Replace the trigger as the strategy says; resumable, refused on wrong keys."""
    return _run(
        conn,
        options,
        "upgrade",
        lambda: _checked_upgrade(conn, options, requested),
        dry_run=dry_run,
        measure=measure,
        out=out,
    )


def _run(
    conn: psycopg.Connection[Any],
    options: Options,
    direction: str,
    build: Callable[[], tuple[Implementation, Plan]],
    *,
    dry_run: bool,
    measure: bool,
    out: Out,
) -> Outcome:
    """The plan build() makes, run (resuming a run of the same direction) or, with dry_run, only shown."""
    if dry_run:
        _refuse_while_running(conn, options)
        impl, plan = build()
        return _dry_run(conn, options, impl, plan, measure, out)
    # The run lock comes first: even reading the catalog could queue behind another run's pending lock.
    with run_lock(conn, options.spec.label):
        impl, plan = build()
        state = StateStore(conn, options).read()
        return _execute(
            conn,
            options,
            impl,
            plan,
            state_running=bool(state and state.running and state.direction == direction),
            measure=measure,
            out=out,
        )


def _refuse_while_running(conn: psycopg.Connection[Any], options: Options) -> None:
    """A dry run refuses, as the real run would, while another run holds the table's run lock."""
    with run_lock(conn, options.spec.label):
        pass  # taken and released at once: a dry run must not hold a real run off


def interrupted_downgrade(state: State | None, options: Options) -> str | None:
    """Why upgrade refuses while a downgrade is half done (status shows the same reason), else None."""
    if state is not None and state.direction == "downgrade" and state.running:
        return f"a downgrade of {options.spec.label} was interrupted; run downgrade again to finish it"
    return None


def _checked_upgrade(
    conn: psycopg.Connection[Any], options: Options, requested: Requested
) -> tuple[Implementation, Plan]:
    """The upgrade plan, refused while a downgrade is half done; says why PG 11 keeps the trigger."""
    impl, plan = build_upgrade(conn, options, requested)
    refusal = interrupted_downgrade(StateStore(conn, options).read(), options)
    if refusal is not None:
        raise RefusedError(refusal)
    if plan.strategy == "keep-trigger" and impl.shape == "plain" and impl.major < 12:
        log.warning(
            "GENERATED columns need PostgreSQL 12 (this server is %s): keeping the trigger, fixing its formula",
            impl.server_version,
        )
    return impl, plan


def downgrade(conn: psycopg.Connection[Any], options: Options, *, dry_run: bool = False, out: Out = print) -> Outcome:
    """Back to the trigger with the safe formula; PK and indexes as they were before the upgrade."""
    return _run(
        conn, options, "downgrade", lambda: build_downgrade(conn, options), dry_run=dry_run, measure=False, out=out
    )


def _dry_run(
    conn: psycopg.Connection[Any], options: Options, impl: Implementation, plan: Plan, measure: bool, out: Out
) -> Outcome:
    """Say what would happen and check the data, changing nothing."""
    out(f"dry run: {plan.direction} with strategy {plan.strategy}: {plan.reason}")
    for warning in plan.warnings:
        out(f"warning: {warning}")
    for number, step in enumerate(s for s in plan.steps if s.kind in ("ddl", "concurrent", "backfill")):
        out(f"  would run step {number + 1}: {step.title} [{step.lock}; ~{human_seconds(step.estimate_seconds)}]")
    code = 0
    if any(step.kind == "verify" for step in plan.steps):
        result = verify_full(conn, options, impl)
        for line in describe(result):
            out(f"pre-verification: {line}")
        if not result.clean:
            out("upgrade would refuse: wrong keys found; run partkey-migrate repair first")
            code = 1
    if measure:
        measuring.emit(conn, options, impl, plan.strategy, out)
    out("dry run: nothing was changed")
    return Outcome(code, "dry-run", "nothing was changed")


def _execute(
    conn: psycopg.Connection[Any],
    options: Options,
    impl: Implementation,
    plan: Plan,
    *,
    state_running: bool,
    measure: bool,
    out: Out,
) -> Outcome:
    """Run the plan under the run lock: verification first, then the steps, each recorded as it commits."""
    store = StateStore(conn, options)
    if plan.empty:
        if state_running:
            with_lock_retries(conn, options, "state", lambda: store.finish(plan.final_state))
        out(f"nothing to do: {plan.reason}")
        return Outcome(0, plan.final_state, plan.reason)
    out(f"{plan.direction} {options.spec.label} with strategy {plan.strategy}: {plan.reason}")
    for warning in plan.warnings:
        log.warning("%s", warning)
    if measure:
        measuring.emit(conn, options, impl, plan.strategy, out)
    for step in plan.steps:
        if step.kind == "verify":
            _pre_verify(conn, options, impl, out)
    captured = None if state_running else (capture(conn, options, impl) if plan.direction == "upgrade" else None)

    def begin() -> None:
        store.ensure()
        if state_running:
            log.info("resuming the interrupted %s of %s", plan.direction, options.spec.label)
        else:
            store.begin(plan.direction, plan.strategy, captured)

    with_lock_retries(conn, options, "state table", begin)
    steps = [s for s in plan.steps if s.kind != "verify"]
    for number, step in enumerate(steps, start=1):
        _fault_injection_pause(step.name)
        _run_step(conn, options, store, step, number, len(steps), plan.final_state if number == len(steps) else None)
    out(f"{plan.direction} finished: state {plan.final_state}")
    return Outcome(0, plan.final_state, f"{plan.direction} finished")


def _fault_injection_pause(step: str) -> None:
    """Crash tests: PARTKEY_MIGRATE_PAUSE_BEFORE=<step> sleeps, outside any transaction, before that step."""
    if os.environ.get("PARTKEY_MIGRATE_PAUSE_BEFORE") != step:
        return
    seconds = float(os.environ.get("PARTKEY_MIGRATE_PAUSE_SECONDS", "3600"))
    log.warning("pausing %.1fs before step %s (PARTKEY_MIGRATE_PAUSE_BEFORE)", seconds, step)
    time.sleep(seconds)


def _pre_verify(conn: psycopg.Connection[Any], options: Options, impl: Implementation, out: Out) -> None:
    """Refuse, before any change, while a row has a wrong, NULL or erroring key."""
    result = verify_full(conn, options, impl)
    for line in describe(result):
        out(f"pre-verification: {line}")
    if not result.clean:
        raise RefusedError(
            f"refusing to start: {result.mismatched + result.null_keys + result.expression_errors} row(s) of "
            f"{options.spec.label} have a wrong key; run `partkey-migrate repair` first. Nothing was changed."
        )


def _run_step(
    conn: psycopg.Connection[Any],
    options: Options,
    store: StateStore,
    step: Step,
    number: int,
    total: int,
    final_state: str | None,
) -> None:
    """One step in one transaction, its state record and (for the last) the final state committed with it."""
    log.info(
        "step %d/%d %s: %s [lock: %s; rewrites: %s; estimate %s]",
        number,
        total,
        step.name,
        step.title,
        step.lock,
        "yes" if step.rewrites else "no",
        human_seconds(step.estimate_seconds),
    )

    if step.kind in ("concurrent", "backfill"):
        started = time.monotonic()
        if step.kind == "concurrent":
            with progress.index_build(conn, f"step {number}/{total} {step.name}"):
                _build_concurrently(conn, options, step)
        else:
            _backfill(conn, options, step)
        with_lock_retries(conn, options, f"step {step.name}", lambda: _record(store, step.name, final_state))
        log.info("step %d/%d %s: done in %s", number, total, step.name, human_seconds(time.monotonic() - started))
        return

    def work() -> None:
        if step.kind == "verify-new":
            _check_columns_agree(conn, options, step.columns or (options.spec.key_column, options.new_column))
        else:
            for statement in step.statements:
                conn.execute(statement)
        store.record(step.name)
        if final_state is not None:
            store.finish(final_state)

    started = time.monotonic()
    with progress.activity(f"step {number}/{total} {step.name}", when=step.timeout == "scan"):
        with_lock_retries(conn, options, f"step {step.name}", work, kind=step.timeout)
    log.info("step %d/%d %s: done in %s", number, total, step.name, human_seconds(time.monotonic() - started))


def _record(store: StateStore, step: str, final_state: str | None) -> None:
    """Record a step (and the final state) in the state table."""
    store.record(step)
    if final_state is not None:
        store.finish(final_state)


def _build_concurrently(conn: psycopg.Connection[Any], options: Options, step: Step) -> None:
    """CREATE INDEX CONCURRENTLY cannot run in a transaction: session timeouts, retries, and a check of the result."""
    assert step.index is not None and step.expected is not None
    index = step.index

    def attempt() -> None:
        existing = index_state(conn, options, index)
        if existing is not None and not existing[0]:
            # A failed or interrupted concurrent build leaves an INVALID index behind: start over.
            conn.execute(
                sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(options.spec.schema, index))
            )
        for statement in step.statements:
            conn.execute(statement)

    with scan_limits(conn, options):
        retry_lock_timeouts(
            attempt,
            f"step {step.name}",
            backoff(options),
            log,
            lambda attempts, _error: (
                f"step {step.name}: no lock within {options.lock_timeout:g}s after {attempts} attempts; "
                "re-run later (it resumes)"
            ),
        )
    built = index_state(conn, options, step.index)
    if built is None or not built[0] or built[1] != step.expected:
        raise RefusedError(
            f"step {step.name}: the index built on {options.new_column} is not the expected copy "
            f"({built[1] if built else 'missing'}); expected {step.expected}"
        )


def _backfill(conn: psycopg.Connection[Any], options: Options, step: Step) -> None:
    """Run the batch UPDATE until it touches no row, each batch its own lock-retried transaction."""
    batches = rows = 0
    shown = progress.rows(f"step {step.name}", lambda: progress.estimated_rows(conn, options))
    while True:
        count = with_lock_retries(
            conn, options, f"step {step.name} batch {batches + 1}", lambda: conn.execute(step.statements[0]).rowcount
        )
        if count <= 0:
            break
        batches += 1
        rows += count
        shown(count)
    shown.close()
    log.info("step %s: %d row(s) in %d batch(es)", step.name, rows, batches)


def _check_columns_agree(conn: psycopg.Connection[Any], options: Options, columns: tuple[str, str]) -> None:
    """The copy must equal the key on every row before the swap."""
    key, copy = columns
    row = conn.execute(sqlgen.columns_differ(options.spec, key, copy)).fetchone()
    differ = int(row[0]) if row else 0
    if differ:
        raise RefusedError(
            f"{differ} row(s) have {key} different from {copy}: "
            "run `partkey-migrate repair`, then run the command again (it resumes)"
        )
