"""Measure the server's speed on the table itself, now, and scale the built-in rates by it.

Built-in rates alone were off 0.2x-2.4x on the same 2-vCPU VM between a quiet and a heavily loaded hour (the
machine, not the table). `plan` therefore times one pass of the formula over a TABLESAMPLE SYSTEM sample of the
table's own heap (about PROBE_BYTES of pages, read in full; the median of PROBE_READS reads), compares it with
what the built-in VALIDATE rates say that sample should take, and scales every estimate by the ratio. Reads only
(ACCESS SHARE), under the session's statement and lock timeouts; skipped for tables under PROBE_MIN_BYTES, whose
steps are short anyway.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from typing import Any

import psycopg
from psycopg import sql

from exporter.keyspec import KeySpec
from migrations.catalog import TableSize
from migrations.sqlgen import safe_expression
from migrations.steps import human_bytes, human_seconds, scan_estimate

PROBE_BYTES = 64 * 1024**2  # about 0.1 s of reading on this VM
PROBE_READS = 3  # the median of three reads: one scheduling hiccup on a loaded machine does not set the speed
PROBE_MIN_BYTES = 64 * 1024**2
SPEED_LIMITS = (0.05, 20.0)  # a probe far outside this measured a hiccup, not the machine


def calibrate(conn: psycopg.Connection[Any], spec: KeySpec, size: TableSize) -> TableSize:
    """The size with `speed` (actual/built-in) and `probe` (what was measured) filled in from a timed sample read."""
    if size.heap_bytes < PROBE_MIN_BYTES:
        return replace(size, probe=f"built-in rates (heap under {human_bytes(PROBE_MIN_BYTES)}: not measured)")
    percent = min(100.0, PROBE_BYTES / size.heap_bytes * 100)
    query = sql.SQL(
        "SELECT count(*), count(*) FILTER (WHERE {key} IS DISTINCT FROM {safe}) "
        "FROM {table} TABLESAMPLE SYSTEM ({percent}) REPEATABLE (0)"
    ).format(
        key=sql.Identifier(spec.key_column),
        safe=safe_expression(spec),
        table=spec.table_ident,
        percent=sql.Literal(round(percent, 4)),
    )
    times = []
    try:
        for _ in range(PROBE_READS):
            started = time.monotonic()
            row = conn.execute(query).fetchone()
            times.append(time.monotonic() - started)
    except psycopg.Error as error:
        # The estimate is advice: a probe that cannot run leaves the built-in rates, and says why.
        reason = (error.diag.message_primary or str(error)).splitlines()[0]
        return replace(size, probe=f"built-in rates (the timed sample read failed: {reason})")
    took = statistics.median(times)
    rows = int(row[0]) if row else 0
    sampled = int(size.heap_bytes * percent / 100)
    expected = scan_estimate(TableSize(heap_bytes=sampled, total_bytes=sampled, rows=rows, index_count=0), "validate")
    if rows == 0 or expected <= 0:
        return replace(size, probe="built-in rates (the timed sample read found no rows)")
    speed = min(max(took / expected, SPEED_LIMITS[0]), SPEED_LIMITS[1])
    return replace(
        size,
        speed=speed,
        speed_measured=True,
        probe=(
            f"x{speed:.2f} the built-in rates, measured now: a {percent:.3g}% sample ({human_bytes(sampled)}, "
            f"{rows:,} rows) read with the formula in {human_seconds(took)} (median of {PROBE_READS}), "
            f"against {human_seconds(expected)} at the built-in VALIDATE rates"
        ),
    )
