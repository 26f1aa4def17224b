"""Fix wrong keys in batches; on a LIST table each fix moves the row to its right partition."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from exporter.verify import Verifier
from migrations import int_min, progress
from migrations.errors import Outcome, RefusedError
from migrations.options import Options
from migrations.retry import with_lock_retries
from migrations.runlock import run_lock
from migrations.runner import inspect
from migrations.sqlgen import safe_expression
from migrations.verification import describe, verify_full

log = logging.getLogger("partkey-migrate")


def _batch_update(options: Options, leaf: sql.Identifier, leaf_name: str, skip_int_min: bool) -> sql.Composed:
    """UPDATE through the parent (so PostgreSQL may move the row) of up to batch-size bad rows of one leaf."""
    spec = options.spec
    key = sql.Identifier(spec.key_column)
    extra = sql.SQL(" AND {}").format(int_min.overflow_filter(options)) if skip_int_min else sql.SQL("")
    return sql.SQL(
        "UPDATE {table} SET {key} = {expr} WHERE tableoid = {leaf_name}::regclass AND ctid = ANY(ARRAY("
        "SELECT ctid FROM ONLY {leaf} WHERE {key} IS DISTINCT FROM {expr}{extra} LIMIT {limit}))"
    ).format(
        table=spec.table_ident,
        key=key,
        expr=safe_expression(spec),
        leaf=leaf,
        leaf_name=sql.Literal(leaf_name),
        extra=extra,
        limit=sql.Literal(options.batch_size),
    )


def repair(conn: psycopg.Connection[Any], options: Options, *, out: Callable[[str], None] = print) -> Outcome:
    """Set every wrong key to the safe formula's value, batch by batch, each batch its own transaction."""
    with run_lock(conn, options.spec.label):
        impl = inspect(conn, options)
        if impl.generated_kind is not None:
            out(f"nothing to repair: {options.spec.key_column} is a generated column, PostgreSQL computes it")
            return Outcome(0, "clean", "generated column")
        relations = Verifier(conn, options.spec).relations()
        batches = fixed = 0
        shown = progress.rows(f"repair {options.spec.label}", lambda: progress.wrong_keys(conn, options))
        for schema, name in relations:
            leaf = sql.Identifier(schema, name)
            careful = int_min.needs_care(impl)
            statement = _batch_update(options, leaf, leaf.as_string(conn), careful)
            while True:

                def work(statement: sql.Composed = statement) -> int:
                    return conn.execute(statement).rowcount

                count = with_lock_retries(conn, options, f"repair batch {batches + 1}", work)
                if count <= 0:
                    break
                batches += 1
                fixed += count
                shown(count)
                moved = " (moved to the partition of the right key)" if impl.shape == "list" else ""
                out(f"batch {batches}: fixed {count} row(s) of {schema}.{name}{moved}")
                if count < options.batch_size:
                    break
            if careful:
                # Rows whose source hashes to INT_MIN: the legacy trigger would raise on their move.
                def move(leaf: sql.Identifier = leaf) -> int:
                    return int_min.fix_rows(conn, options, impl, leaf)

                count = with_lock_retries(conn, options, f"repair INT_MIN rows of {schema}.{name}", move)
                if count:
                    fixed += count
                    out(
                        f"fixed {count} row(s) of {schema}.{name} whose {options.spec.source_column} hashes to INT_MIN"
                        " (key trigger off on their destination partition for the move, then on again as it was)"
                    )
        shown.close()
        out(f"repair: fixed {fixed} row(s) in {batches} batch(es)")
        result = verify_full(conn, options, impl)
    for line in describe(result):
        out(f"after repair: {line}")
    if not result.clean:
        raise RefusedError(f"{options.spec.label} still has wrong keys after repair (rows changing under load?)")
    return Outcome(0, "clean", f"fixed {fixed} row(s)")
