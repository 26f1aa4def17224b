"""Tables change under a running exporter: metrics follow within one interval, vanished partitions disappear.

"Within one interval" is asserted by cause, not by the clock: the first runs of the checks that start after a change
already show it (nothing is kept across runs), and /metrics follows. A bound in seconds failed on loaded machines.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporter.app import Exporter
from exporter.collector import PartkeyCollector
from exporter.http import ExporterHTTPServer
from tests.reliability.harness import config, get, series
from tests.schema import create_list_table, insert_rows
from tests.support import Samples, metrics, parse, poll, serving

TT = {"target": "t1", "table": "public.chunks"}
# The checks whose series these tests read: partitions and the trigger (implementation), rows per partition.
FOLLOWERS = ("implementation", "distribution")


def _partitions(samples: Samples) -> set[str]:
    return {s["partition"] for s in series(samples, "partkey_partition_rows") if s.get("table") == "public.chunks"}


def _started_since(exporter: Exporter, check: str, since: float) -> bool:
    """Has a run of the check on t1 that started at or after SINCE ended (successful or not)?"""
    result = exporter.store.latest("t1", "public.chunks", check)
    return result is not None and result.finished_at - result.duration_seconds >= since


def _rendered(exporter: Exporter) -> Samples:
    """What the collector yields from the store's current snapshot (/metrics is encoded from it a moment later)."""
    registry = CollectorRegistry()
    registry.register(PartkeyCollector(exporter.store, list(exporter.targets)))
    return parse(generate_latest(registry).decode())


def _follow(server: ExporterHTTPServer, change: Callable[[], object], seen: Callable[[Samples], bool]) -> None:
    """Apply a change: the checks' first runs that start after it show it, and then so does /metrics."""
    change()
    changed = time.time()
    exporter = server.exporter
    poll(lambda: all(_started_since(exporter, c, changed) for c in FOLLOWERS), "runs that started after the change")
    rendered = _rendered(exporter)
    assert seen(rendered), sorted(k for k in rendered if k[0].startswith(("partkey_partition", "partkey_table")))
    poll(lambda: seen(metrics(server.url)), "the change on /metrics")


@pytest.fixture
def server(conn: psycopg.Connection[Any], dsn: str) -> Iterator[ExporterHTTPServer]:
    create_list_table(conn, modulus=4, trigger="parent")
    insert_rows(conn, 400, modulus=4)
    conn.execute("ANALYZE chunks")
    exporter = Exporter(config(dsn, checks={"verification_full": "{interval: 5s}"}))
    with serving(exporter) as running:
        exporter.start()
        poll(lambda: len(_partitions(metrics(running.url))) == 4, "four partitions on /metrics")
        yield running


def test_partition_dropped_detached_and_attached(server: ExporterHTTPServer, conn: psycopg.Connection[Any]) -> None:
    before = _partitions(metrics(server.url))
    assert len(before) == 4
    dropped = next(p for p in before if p.endswith("_part_03"))
    detached = next(p for p in before if p.endswith("_part_02"))
    _follow(
        server,
        lambda: conn.execute("DROP TABLE chunks_part_03"),
        lambda s: dropped not in _partitions(s) and get(s, "partkey_table_partitions", **TT) == 3,
    )
    _follow(
        server,
        lambda: conn.execute("ALTER TABLE chunks DETACH PARTITION chunks_part_02"),
        lambda s: detached not in _partitions(s) and get(s, "partkey_table_partitions", **TT) == 2,
    )
    _follow(
        server,
        lambda: conn.execute("ALTER TABLE chunks ATTACH PARTITION chunks_part_02 FOR VALUES IN (2)"),
        lambda s: detached in _partitions(s) and get(s, "partkey_table_partitions", **TT) == 3,
    )
    after = metrics(server.url)
    assert _partitions(after) == before - {dropped}
    # Nothing anywhere on /metrics still names the dropped partition.
    assert not [k for k in after if ("partition", dropped) in k[1]]


def test_table_renamed_away_and_back(server: ExporterHTTPServer, conn: psycopg.Connection[Any]) -> None:
    _follow(
        server,
        lambda: conn.execute("ALTER TABLE chunks RENAME TO chunks_old"),
        lambda s: get(s, "partkey_check_success", **TT, check="distribution") == 0 and not _partitions(s),
    )
    gone = metrics(server.url)
    for check in ("implementation", "distribution"):
        result = server.exporter.store.latest("t1", "public.chunks", check)
        assert result is not None and result.error is not None
        assert "public.chunks" in result.error and "does not exist" in result.error, result.error
        assert result.payload is None  # no stale numbers kept for a table that is gone
    # The table's data series are gone rather than stale; only the check's own success series remain.
    assert get(gone, "partkey_up", target="t1") == 1  # the database is fine: up does not lie
    assert get(gone, "partkey_table_partitions", **TT) is None
    _follow(
        server,
        lambda: conn.execute("ALTER TABLE chunks_old RENAME TO chunks"),
        lambda s: len(_partitions(s)) == 4 and get(s, "partkey_check_success", **TT, check="distribution") == 1,
    )


def test_trigger_disabled_and_enabled(server: ExporterHTTPServer, conn: psycopg.Connection[Any]) -> None:
    assert get(metrics(server.url), "partkey_key_trigger_enabled", **TT) == 1
    _follow(
        server,
        lambda: conn.execute("ALTER TABLE chunks DISABLE TRIGGER set_partition_key"),
        lambda s: get(s, "partkey_key_trigger_enabled", **TT) == 0,
    )
    samples = metrics(server.url)
    assert get(samples, "partkey_key_implementation_optimal", **TT) == 0
    _follow(
        server,
        lambda: conn.execute("ALTER TABLE chunks ENABLE TRIGGER set_partition_key"),
        lambda s: get(s, "partkey_key_trigger_enabled", **TT) == 1,
    )
