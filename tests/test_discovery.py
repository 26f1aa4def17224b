"""tables: auto: what discovery finds and why, and a running exporter that follows tables created and dropped."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from exporter.app import Exporter
from exporter.cli import main
from exporter.config import TargetConfig, parse_config
from exporter.discovery import DiscoveryResult, discover
from tests.schema import create_list_table, create_plain_table, scalar
from tests.support import Samples, assert_lock_timeout, metrics, names_with, serving

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


def write_config(path: Path, dsn: str, extra: str = "") -> Path:
    """A config file with one tables: auto target."""
    file = path / "partkey.yaml"
    file.write_text(f'targets:\n  - name: t1\n    dsn: "{dsn}"\n    tables: auto\n{extra}')
    return file


def test_report_discover_prints_what_would_be_watched_and_why(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dry run: each table with the place that keeps its key, the skipped ones with the reason; exit 0."""
    keyed_tables(conn)
    config = write_config(tmp_path, dsn, "    exclude: [ignored]\n")
    assert main(["report", "--config", str(config), "--discover"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "t1: discovery ok"
    assert lines[1:7] == [
        "  watch app.checked (key partition_key): discovered, kept by CHECK checked_partition_key_check "
        "= abs(hashtext(collection_id) % 10)",
        "        incremental on id: identity column in the primary key, leads index checked_pkey",
        "  watch app.docs (key partition_key): discovered, kept by column partition_key "
        "= abs(hashtext(collection_id) % 10)",
        "        incremental on id: identity column in the primary key, leads index docs_pkey",
        "  watch public.chunks (key partition_key): discovered, kept by trigger set_partition_key -> "
        "public.compute_partition_key() = abs(hashtext(collection_id) % 4)",
        "        incremental on id: identity column in the primary key, leads index chunks_pkey",
    ]
    assert lines[7] == "  skip  public.ignored: excluded by exclude:"
    assert lines[8].startswith("  skip  public.routed: keyed by its PARTITION BY LIST")
    assert main(["report", "--config", str(config), "--discover", "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    discovered = document["targets"][0]["discovery"]
    assert document["targets"][0]["configured"] == []
    assert discovered["success"] is True
    assert [(t["table"], t["source"]) for t in discovered["tables"]] == [
        ("app.checked", "check"),
        ("app.docs", "generated"),
        ("public.chunks", "trigger"),
    ]
    # Nothing ran but discovery: no check touched the tables.
    assert scalar(conn, "SELECT count(*) FROM pg_stat_user_tables WHERE seq_scan > 0 AND relname = 'chunks'") == 0


def test_report_discover_exit_codes(dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """3 when a target cannot be reached (with the reason), 2 on a bad configuration; the report fails too."""
    missing = make_conninfo(dsn, dbname="partkey_no_such_database")
    config = write_config(tmp_path, missing)
    assert main(["report", "--config", str(config), "--discover"]) == 3
    out = capsys.readouterr().out
    assert out.startswith("t1: discovery FAILED: target t1 is down: ")
    assert "partkey_no_such_database" in out
    # The ordinary report has no table to show for it: it says why and fails too.
    assert main(["report", "--config", str(config), "--no-chart"]) == 2
    assert capsys.readouterr().out.startswith("t1: discovery FAILED: target t1 is down: ")
    config.write_text(config.read_text() + "    exclude: ['a[b']\n")
    assert main(["report", "--config", str(config), "--discover"]) == 2
    assert "exclude[0]: Value error, glob 'a[b' has a [ without its closing ]" in capsys.readouterr().err


def test_report_lists_discovered_tables(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ordinary report (text and JSON) says which tables discovery found, and why, with their health."""
    create_list_table(conn, modulus=4)
    config = write_config(tmp_path, dsn)
    assert main(["report", "--config", str(config), "--no-chart"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("t1: discovery ok\n  watch public.chunks (key partition_key): discovered, kept by trigger")
    assert "public.chunks" in text.split("\n", 2)[2]
    assert main(["report", "--config", str(config), "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [t["table"] for t in document["discovery"][0]["tables"]] == ["public.chunks"]
    assert [t["table"] for t in document["tables"]] == ["public.chunks"]


@pytest.mark.versioned("discovery catalog reads")
def test_discovery_on_every_version(conn: psycopg.Connection[Any], dsn: str) -> None:
    """The semantik trigger (on the parent on 13+, on each partition on 11/12), a CHECK, and a generated column
    where the version has them (12+): found with the same formulas on PG 11-18."""
    major = conn.info.server_version // 10000
    create_list_table(conn, modulus=4, trigger="parent" if major >= 13 else "partitions")
    create_plain_table(conn, table="checked", key="check", modulus=10)
    if major >= 12:
        create_plain_table(conn, table="docs", key="generated", modulus=10)
    found, skipped = discover(conn, target_config(dsn))
    expected = [("public.checked", "check"), ("public.chunks", "trigger")]
    if major >= 12:
        expected.append(("public.docs", "generated"))
    assert [(f.table.label, f.source) for f in found] == expected
    assert {f.table.label: f.table.monotonic_column for f in found} == {label: "id" for label, _ in expected}
    formulas = {f.table.label: f.formula for f in found}
    assert formulas["public.chunks"] == "abs(hashtext(collection_id) % 4)"
    assert formulas["public.checked"] == "abs(hashtext(collection_id) % 10)"
    assert skipped == []


def test_a_replaced_target_ignores_its_old_discovery(conn: psycopg.Connection[Any], dsn: str) -> None:
    """A reload that changes an auto target: a discovery of the old one that ends late changes nothing."""
    create_list_table(conn, table="alpha", modulus=4)
    text = f'targets:\n  - name: t1\n    dsn: "{dsn}"\n    tables: auto\n'
    exporter = Exporter(parse_config(text, "<t>"))
    try:
        exporter.discover_now()
        stale = exporter.discovery["t1"]
        assert list(exporter.tables) == [("t1", "public.alpha")]
        assert exporter.reconfigure(parse_config(text + "    exclude: [alpha]\n", "<t>"))
        assert exporter.discovery["t1"] is not stale and exporter.tables == {}
        stale.run()  # the old target's discovery, ending after the reload
        assert exporter.tables == {} and "t1" not in exporter.store.current.discoveries
        exporter.discover_now()
        result = exporter.store.current.discoveries["t1"]
        assert result.found == () and [s.table for s in result.skipped] == ["public.alpha"]
        assert exporter.tables == {}
    finally:
        exporter.stop()


def test_discovery_blocked_by_a_lock_names_lock_timeout(conn: psycopg.Connection[Any], dsn: str) -> None:
    """A catalog held by another session: discovery's failure line names the target's lock_timeout, as checks do."""
    create_list_table(conn, table="alpha", modulus=4)
    exporter = Exporter(parse_config(f'targets:\n  - name: t1\n    dsn: "{dsn}"\n    tables: auto\n', "<test>"))
    runner = exporter.discovery["t1"]
    runner.target.lock_timeout = 0.2
    try:
        assert runner.run().success  # connected (startup reads no pg_trigger from here on) and found alpha
        with psycopg.connect(dsn) as locker:
            # Discovery's candidate query reads pg_trigger: ACCESS EXCLUSIVE on it makes that read wait.
            locker.execute("LOCK TABLE pg_catalog.pg_trigger IN ACCESS EXCLUSIVE MODE")
            result = runner.run()
            locker.rollback()
    finally:
        exporter.stop()
    assert not result.success
    assert_lock_timeout(result.error, "0.2s")
    assert [f.table.label for f in result.found] == ["public.alpha"]  # the last good set stays
