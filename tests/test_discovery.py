"""tables: auto: what discovery finds and why, and a running exporter that follows tables created and dropped."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from exporter.app import Exporter
from exporter.config import TargetConfig, parse_config
from exporter.discovery import DiscoveryResult, discover
from tests.schema import create_list_table, create_plain_table
from tests.support import Samples, metrics, names_with, serving

T = TypeVar("T")


def target_config(dsn: str, extra: str = "", tables: str = "auto") -> TargetConfig:
    """One target with tables: auto (and whatever EXTRA adds to it)."""
    body = extra.strip().replace("\n", "\n    ")
    config = parse_config(f'targets:\n  - name: t1\n    dsn: "{dsn}"\n    tables: {tables}\n    {body}\n', "<test>")
    return config.targets[0]


def keyed_tables(conn: psycopg.Connection[Any]) -> None:
    """A trigger, a generated column, a CHECK, a partition expression, an unkeyed table, in two schemas."""
    conn.execute("CREATE SCHEMA app")
    create_list_table(conn, modulus=4)
    create_list_table(conn, table="ignored", modulus=4)
    create_plain_table(conn, schema="app", table="docs", key="generated", modulus=10)
    create_plain_table(conn, schema="app", table="checked", key="check", modulus=10)
    conn.execute(
        "CREATE TABLE routed (id bigint, collection_id uuid) PARTITION BY LIST (abs(hashtext(collection_id::text) % 4))"
    )
    conn.execute("CREATE TABLE app.unkeyed (id bigint, partition_key integer)")


def test_discovery_finds_each_kind_of_key_and_says_why(conn: psycopg.Connection[Any], dsn: str) -> None:
    """Trigger (LIST table), generated column and CHECK are found with their formula; the rest is left out."""
    keyed_tables(conn)
    found, skipped = discover(conn, target_config(dsn, "exclude: [ignored]"))
    assert [(f.table.label, f.table.key_column, f.source, f.formula, f.table.modulus) for f in found] == [
        ("app.checked", "partition_key", "check", "abs(hashtext(collection_id) % 10)", 10),
        ("app.docs", "partition_key", "generated", "abs(hashtext(collection_id) % 10)", 10),
        ("public.chunks", "partition_key", "trigger", "abs(hashtext(collection_id) % 4)", 4),
    ]
    assert found[2].maintained_by == "trigger set_partition_key -> public.compute_partition_key()"
    assert [s.table for s in skipped] == ["public.ignored", "public.routed"]
    assert skipped[0].reason == "excluded by exclude:"
    # The partition key's text is the server's (pg_get_partkeydef): only its frame is asserted.
    assert skipped[1].reason.startswith("keyed by its PARTITION BY LIST (abs(")
    assert skipped[1].reason.endswith("): no stored key column to verify")


def test_schemas_globs_and_a_configured_entry_override(conn: psycopg.Connection[Any], dsn: str) -> None:
    """schemas: limits the search; a configured table is watched as configured, not as discovered."""
    keyed_tables(conn)
    found, _ = discover(conn, target_config(dsn, "schemas: ['ap?']"))
    assert [f.table.label for f in found] == ["app.checked", "app.docs"]
    config = target_config(dsn, "exclude: ['public.*']", tables="[auto, {schema: app, table: docs, modulus: 10}]")
    found, skipped = discover(conn, config)
    assert [f.table.label for f in found] == ["app.checked"]
    assert ("app.docs", "configured in tables: (kept by column partition_key)") in [
        (s.table, s.reason) for s in skipped
    ]
    exporter = Exporter(parse_config(f'targets:\n  - name: t1\n    dsn: "{dsn}"\n    tables: auto\n', "<test>"))
    try:
        exporter.discover_now()
        assert sorted(label for _, label in exporter.tables) == [
            "app.checked",
            "app.docs",
            "public.chunks",
            "public.ignored",
        ]
        assert exporter.tables[("t1", "public.chunks")].checks.implementation.interval == 300
    finally:
        exporter.stop()


def until(read: Callable[[], T], done: Callable[[T], bool], what: str, seconds: float = 90) -> T:
    """Poll until DONE(READ()) (a generous deadline: 2 shared cores); fail naming WHAT otherwise."""
    deadline = time.monotonic() + seconds
    while True:
        value = read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds:g} s; last value: {value!r}")
        time.sleep(0.2)


def tables_on(samples: Samples) -> set[str]:
    """Tables with an implementation series on /metrics."""
    return {labels["table"] for labels in names_with(samples, "partkey_key_implementation_optimal")}


def with_table(samples: Samples, table: str) -> list[str]:
    """Every series name that carries table=TABLE."""
    return sorted({name for (name, labels) in samples if ("table", table) in labels})


FAST = """
    checks:
      implementation: {interval: 1s}
      verification_full: {interval: 1h}
      verification_sample: {interval: 1h}
      distribution_exact: {interval: 1h}
"""


def test_running_exporter_follows_created_and_dropped_tables(conn: psycopg.Connection[Any], dsn: str) -> None:
    """A table created while the exporter runs gets series; a dropped one loses every series at the next run."""
    create_list_table(conn, table="alpha", modulus=4)
    exporter = Exporter(parse_config(f'targets:\n  - name: t1\n    dsn: "{dsn}"\n    tables: auto\n{FAST}', "<t>"))
    with serving(exporter) as server:
        exporter.start()
        url = server.url
        until(lambda: tables_on(metrics(url)), lambda t: t == {"public.alpha"}, "alpha watched")
        create_list_table(conn, table="beta", modulus=4)
        until(lambda: tables_on(metrics(url)), lambda t: t == {"public.alpha", "public.beta"}, "beta appears")
        assert ("partkey_discovery_tables", (("target", "t1"),)) in metrics(url)
        conn.execute("DROP TABLE alpha")
        after = until(lambda: metrics(url), lambda s: not with_table(s, "public.alpha"), "alpha's series gone")
        assert tables_on(after) == {"public.beta"}
        assert after[("partkey_discovery_tables", (("target", "t1"),))] == 1
        assert after[("partkey_discovery_success", (("target", "t1"),))] == 1
        assert not [key for key in exporter.runners if key[1] == "public.alpha"]


def test_a_failed_discovery_keeps_the_last_tables(conn: psycopg.Connection[Any], dsn: str, admin_dsn: str) -> None:
    """No connection for discovery: success 0 with the reason, the tables found before stay watched, then back."""
    create_list_table(conn, table="alpha", modulus=4)
    database = conn.info.dbname
    exporter = Exporter(parse_config(f'targets:\n  - name: t1\n    dsn: "{dsn}"\n    tables: auto\n{FAST}', "<t>"))
    success = ("partkey_discovery_success", (("target", "t1"),))
    with serving(exporter) as server, psycopg.connect(admin_dsn, autocommit=True) as admin:
        exporter.start()
        url = server.url
        until(lambda: tables_on(metrics(url)), lambda t: t == {"public.alpha"}, "alpha watched")
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        try:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND application_name = 'partkey-exporter'",
                (database,),
            )
            failed = until(lambda: metrics(url), lambda s: s.get(success) == 0, "discovery fails")
            assert tables_on(failed) == {"public.alpha"}
            assert failed[("partkey_discovery_tables", (("target", "t1"),))] == 1
            result: DiscoveryResult = exporter.store.current.discoveries["t1"]
            assert result.error is not None and result.last_success_at is not None
            assert [f.table.label for f in result.found] == ["public.alpha"]
            assert ("t1", "public.alpha") in exporter.tables
        finally:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        until(lambda: metrics(url), lambda s: s.get(success) == 1, "discovery back")
        assert ("t1", "public.alpha") in exporter.tables
