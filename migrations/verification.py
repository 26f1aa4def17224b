"""Run the exporter's Verifier for the migration, under the scan time limit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from exporter.introspect import Implementation
from exporter.verify import VerificationResult, Verifier
from migrations import progress
from migrations.connect import pooled
from migrations.options import Options, milliseconds


@contextmanager
def scan_limits(conn: psycopg.Connection[Any], options: Options) -> Iterator[None]:
    """Session-level scan limits for the Verifier's own short transactions, restored afterwards.

    Not through a transaction pool: there a session setting lands on a server connection other clients get next.
    """
    if pooled(conn):
        yield
        return
    before = conn.execute("SELECT current_setting('statement_timeout'), current_setting('lock_timeout')").fetchone()
    assert before is not None
    conn.execute("SELECT set_config('statement_timeout', %s, false)", (milliseconds(options.scan_timeout),))
    conn.execute("SELECT set_config('lock_timeout', %s, false)", (milliseconds(options.lock_timeout),))
    try:
        yield
    finally:
        if not conn.closed:
            conn.execute("SELECT set_config('statement_timeout', %s, false)", (before[0],))
            conn.execute("SELECT set_config('lock_timeout', %s, false)", (before[1],))


def verify_full(conn: psycopg.Connection[Any], options: Options, impl: Implementation) -> VerificationResult:
    """Every row's key against the safe formula: mismatches, NULL keys and expression errors."""
    with scan_limits(conn, options), progress.activity(f"verifying every key of {options.spec.label}"):
        return Verifier(conn, options.spec, primary_key=impl.primary_key).run("full")


def describe(result: VerificationResult) -> list[str]:
    """Human lines: the counts, then a few examples."""
    lines = [
        f"rows checked: {result.rows_checked}, wrong keys: {result.mismatched}, "
        f"NULL keys: {result.null_keys}, "
        f"expression errors: {result.expression_errors} ({result.duration_seconds:.2f} s)"
    ]
    for bad in result.examples:
        pk = ", ".join(f"{k}={v}" for k, v in bad.primary_key.items())
        detail = bad.error or f"stored {bad.stored_key}, expected {bad.expected_key}"
        lines.append(f"  {bad.kind} in {bad.relation}: {pk}: {detail}")
    return lines
