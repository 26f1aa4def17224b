"""scan_dsn: the heavy scans run on a real streaming hot standby, with their replay lag and bounded conflict retries."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import generate_latest

from exporter.app import Exporter
from exporter.config import Config, ConfigError, parse_config
from exporter.report import render_json, render_text
from exporter.scan_target import ScanRoute
from exporter.snapshot import CheckResult
from tests.schema import SAFE, create_list_table, insert_rows
from tests.standby import StandbyPair, standby_pair
from tests.support import parse, poll, value

MODULUS = 4
ROWS = 2000
BAD_ROWS = 7
WRONG_KEY = f"(abs(hashtext(collection_id::text) % {MODULUS}) + 1) % {MODULUS}"
LAST_PARTITION = f"chunks_part_{MODULUS - 1:02d}"


def _config(dsn: str, scan_dsn: str | None = None, extra: str = "", table: str = "") -> Config:
    """One target watching chunks with the safe formula; scan_dsn when given."""
    scan = f'\n    scan_dsn: "{scan_dsn}"' if scan_dsn is not None else ""
    return parse_config(
        f"""
{extra}
targets:
  - name: t1
    dsn: "{dsn}"{scan}
    lock_timeout: 60s
    tables:
      - table: chunks
        modulus: {MODULUS}
        key_expression: safe
        monotonic_column: id{table}
""",
        "<test>",
    )


def _fill(conn: psycopg.Connection[Any]) -> None:
    """chunks, LIST-partitioned MODULUS ways, with ROWS good rows and BAD_ROWS rows carrying a wrong key."""
    create_list_table(conn, modulus=MODULUS, trigger=None)
    insert_rows(conn, ROWS, modulus=MODULUS)
    _insert_bad(conn, BAD_ROWS)


def _insert_bad(conn: psycopg.Connection[Any], count: int) -> None:
    """COUNT rows whose stored key is not the formula's."""
    conn.execute(
        f"""INSERT INTO chunks (collection_id, partition_key, content)
            SELECT collection_id, {WRONG_KEY}, 'bad' FROM (SELECT md5('bad' || g)::uuid AS collection_id
            FROM generate_series(1, {count}) g) s"""
    )


def _primary_counts(conn: psycopg.Connection[Any]) -> tuple[int, int, dict[str, int]]:
    """(rows, rows with a wrong key, rows per partition) counted on the primary itself."""
    row = conn.execute(
        f"SELECT count(*), count(*) FILTER (WHERE partition_key IS DISTINCT FROM {SAFE.format(modulus=MODULUS)}) "
        "FROM chunks"
    ).fetchone()
    assert row is not None
    parts = conn.execute("SELECT tableoid::regclass::text, count(*) FROM chunks GROUP BY 1").fetchall()
    return int(row[0]), int(row[1]), {str(name): int(n) for name, n in parts}


def _samples(exporter: Exporter) -> Any:
    """Every sample the exporter would serve."""
    return parse(generate_latest(exporter.registry).decode())


def _result(exporter: Exporter, check: str) -> CheckResult:
    """The latest result of one check of chunks."""
    result = exporter.store.latest("t1", "public.chunks", check)
    assert result is not None, f"{check} never ran"
    return result


def _ours(conn: psycopg.Connection[Any]) -> list[tuple[str, str | None]]:
    """(state, wait_event_type) of the exporter's backends in this connection's database."""
    rows = conn.execute(
        # This database's only, as the other tests count theirs: another exporter may be on the same server.
        "SELECT state, wait_event_type FROM pg_stat_activity WHERE application_name = 'partkey-exporter'"
        " AND datname = current_database()"
    ).fetchall()
    return [(str(state), wait) for state, wait in rows]


# ---------------------------------------------------------------------------------------- configuration (no server)


def test_scan_dsn_and_scan_dsn_file_exclude_each_other(tmp_path: Path) -> None:
    """Both given is an error located at the target; a bad scan_dsn is refused without echoing it."""
    secret = tmp_path / "scan.dsn"
    secret.write_text("host=/nowhere dbname=app password=s3cret\n")
    with pytest.raises(ConfigError) as both:
        parse_config(
            f"targets:\n  - name: a\n    dsn: 'dbname=x'\n    scan_dsn: 'dbname=y'\n    scan_dsn_file: {secret}\n"
            "    tables: [{table: chunks}]\n"
        )
    assert "targets[0]: Value error, give at most one of scan_dsn or scan_dsn_file" in str(both.value)
    with pytest.raises(ConfigError) as bad:
        parse_config(
            "targets:\n  - name: a\n    dsn: 'dbname=x'\n    scan_dsn: 'password=hunter2 ==='\n"
            "    tables: [{table: chunks}]\n"
        )
    assert "scan_dsn is not a valid PostgreSQL connection string or URI" in str(bad.value)
    assert "hunter2" not in str(bad.value)


def test_scan_dsn_file_is_read_when_the_exporter_starts(tmp_path: Path) -> None:
    """scan_dsn_file holds the whole DSN (a mounted secret); unreadable, it is a located error."""
    secret = tmp_path / "scan.dsn"
    secret.write_text("host=/nowhere dbname=app password=s3cret\n")
    config = parse_config(
        f"targets:\n  - name: a\n    dsn: 'dbname=x'\n    scan_dsn_file: {secret}\n    tables: [{{table: chunks}}]\n"
    )
    assert config.targets[0].resolve_scan_dsn() == "host=/nowhere dbname=app password=s3cret"
    secret.unlink()
    with pytest.raises(ConfigError, match=r"targets\.a\.scan_dsn_file: cannot read .*scan\.dsn"):
        config.targets[0].resolve_scan_dsn()


# ------------------------------------------------------------------------------- on the session's server (no standby)


@pytest.mark.versioned("scan_dsn")
def test_unreachable_scan_dsn_fails_the_scans_with_a_reason(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The heavy scans fail naming the scan_dsn and never fall back to the primary; the other checks carry on."""
    _fill(conn)
    nowhere = f"host={tmp_path} port=1 dbname=app user=postgres password=s3cret connect_timeout=1"
    exporter = Exporter(_config(dsn, nowhere))
    try:
        exporter.run_all_once()
    finally:
        exporter.stop()
    for check in ("verification_full", "verification_sample", "distribution_exact"):
        result = _result(exporter, check)
        assert not result.success
        assert result.error is not None and result.error.startswith("target t1 (scan_dsn) is down: ")
        assert result.payload is None and result.scan is None  # nothing was read on the primary instead
    for check in ("implementation", "verification_incremental", "distribution"):
        assert _result(exporter, check).success, _result(exporter, check).error
    samples = _samples(exporter)
    assert value(samples, "partkey_up", target="t1") == 1.0  # the primary's connection works
    assert "s3cret" not in caplog.text
    assert "target t1 (scan_dsn) is down" in caplog.text


@pytest.mark.versioned("scan_dsn")
def test_verify_now_runs_full_and_sample_on_the_scan_dsn(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Path
) -> None:
    """POST /verify's full and sample modes go to the scan_dsn even when their scheduled check is off."""
    _fill(conn)
    nowhere = f"host={tmp_path} port=1 dbname=app user=postgres"
    off = "\n        checks: {verification_full: {enabled: false}, verification_sample: {enabled: false}}"
    exporter = Exporter(_config(dsn, nowhere, table=off))
    assert ("t1", "public.chunks", "verification_full") not in exporter.runners
    try:
        full = exporter.verify_now("t1", "public.chunks", "full")
        sample = exporter.verify_now("t1", "public.chunks", "sample")
        incremental = exporter.verify_now("t1", "public.chunks", "incremental")
    finally:
        exporter.stop()
    for result in (full, sample):
        assert not result.success and result.error is not None
        assert result.error.startswith("target t1 (scan_dsn) is down: ")
    assert incremental.success, incremental.error  # on the primary


@pytest.mark.versioned("scan_dsn")
def test_scan_dsn_on_a_primary_warns_and_still_scans(
    conn: psycopg.Connection[Any], dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A scan_dsn that is not in recovery: the scans run there, a warning says so once, the report shows it."""
    _fill(conn)
    exporter = Exporter(_config(dsn, dsn))
    caplog.set_level(logging.WARNING, logger="exporter.scan_target")
    try:
        exporter.run_all_once()
        exporter.run_all_once()
    finally:
        exporter.stop()
    full = _result(exporter, "verification_full")
    assert full.success and full.scan is not None
    assert full.scan.in_recovery is False and full.scan.replay_lag_seconds is None
    assert full.payload.mismatched == BAD_ROWS
    warnings = [r.getMessage() for r in caplog.records if "is not a standby" in r.getMessage()]
    assert warnings == [
        "t1 (scan_dsn) is not a standby (pg_is_in_recovery() is false): the heavy scans run there anyway, "
        "and no replay lag is exported"
    ]
    samples = _samples(exporter)
    labels = {"target": "t1", "table": "public.chunks", "check": "verification_full"}
    assert value(samples, "partkey_scan_in_recovery", **labels) == 0.0
    assert not [k for k in samples if k[0] == "partkey_scan_replay_lag_seconds"]
    health = exporter.health("t1", "public.chunks")[0]
    assert "  Scanned On (verification_full): scan_dsn, which is NOT a standby" in render_text(health)
    scan = render_json(health)["checks"]["verification_full"]["scan"]
    assert scan == {"in_recovery": False, "replay_lag_seconds": None, "replay_lag_bytes": None, "conflict_retries": 0}
    assert render_json(health)["checks"]["implementation"]["scan"] is None


@pytest.mark.versioned("scan_dsn")
def test_scan_connections_count_under_max_connections(conn: psycopg.Connection[Any], dsn: str) -> None:
    """One target with a scan_dsn wants two connections: a cap of one makes them take turns, never both open."""
    _fill(conn)
    exporter = Exporter(_config(dsn, dsn, extra="max_connections: 1"))
    assert exporter.slots is not None
    try:
        exporter.run_all_once()
    finally:
        exporter.stop()
    assert all(r.success for r in exporter.store.current.results.values())
    assert exporter.slots.max_held == 1
    assert exporter.slots.granted >= 2  # the primary's and the standby's connection each got the slot
    roomy = Exporter(_config(dsn, dsn, extra="max_connections: 2"))
    assert roomy.slots is None  # two connections fit: each keeps its own, no queue


# --------------------------------------------------------------------------------------- on a real streaming standby


@pytest.fixture(scope="module")
def pair() -> Iterator[StandbyPair]:
    """A primary with a filled app database and a hot standby streaming from it; no server survives the module."""

    def setup(admin: str) -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE app")
        with psycopg.connect(admin.replace("dbname=postgres", "dbname=app"), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
            _fill(conn)

    with standby_pair(setup) as started:
        yield started
        root = started.root
    assert not root.exists()
    assert started.postmaster_pids() == [], "a postgres process outlived the standby tests"


@pytest.fixture
def servers(pair: StandbyPair) -> Iterator[tuple[psycopg.Connection[Any], psycopg.Connection[Any]]]:
    """Autocommit connections to the app database on the primary and on the standby, caught up."""
    pair.catch_up()
    with (
        psycopg.connect(pair.dsn("primary", "app"), autocommit=True) as primary,
        psycopg.connect(pair.dsn("standby", "app"), autocommit=True) as standby,
    ):
        yield primary, standby
    # A new session: a test may have restarted the standby under the one above.
    with psycopg.connect(pair.dsn("standby", "app"), autocommit=True) as standby:
        if standby.execute("SELECT pg_is_wal_replay_paused()").fetchone() == (True,):
            standby.execute("SELECT pg_wal_replay_resume()")


@pytest.mark.slow
def test_scans_run_on_the_standby_and_counts_match(
    pair: StandbyPair, servers: tuple[psycopg.Connection[Any], psycopg.Connection[Any]]
) -> None:
    """Full and sample verification and exact counts run on the standby, the rest on the primary; counts agree."""
    primary, standby = servers
    for conn in servers:
        conn.execute("SELECT pg_stat_statements_reset()")
    exporter = Exporter(_config(pair.dsn("primary", "app"), pair.dsn("standby", "app")))
    try:
        exporter.run_all_once()
        # Each server has exactly one exporter connection: the primary's and the scan_dsn's.
        assert [state for state, _ in _ours(primary)] == ["idle"]
        assert [state for state, _ in _ours(standby)] == ["idle"]
    finally:
        exporter.stop()
    rows, bad, parts = _primary_counts(primary)
    assert bad > 0
    full = _result(exporter, "verification_full")
    assert full.success, full.error
    assert full.scan is not None and full.scan.in_recovery
    assert (full.payload.rows_checked, full.payload.mismatched) == (rows, bad)
    exact = _result(exporter, "distribution_exact")
    assert exact.success and exact.scan is not None and exact.scan.in_recovery
    assert {p.name: p.rows for p in exact.payload.partitions} == parts
    sample = _result(exporter, "verification_sample")
    assert sample.success and sample.scan is not None and sample.scan.in_recovery
    for check in ("implementation", "verification_incremental", "distribution"):
        assert _result(exporter, check).success and _result(exporter, check).scan is None
    # The scans' statements were executed on the standby, and on the primary not at all.
    scans = "SELECT count(*) FROM pg_stat_statements WHERE query LIKE '%GROUP BY tableoid%' AND calls > 0"
    assert standby.execute(scans).fetchone() != (0,)
    assert primary.execute(scans).fetchone() == (0,)
    samples = _samples(exporter)
    for check in ("verification_full", "verification_sample", "distribution_exact"):
        labels = {"target": "t1", "table": "public.chunks", "check": check}
        assert value(samples, "partkey_scan_in_recovery", **labels) == 1.0
        assert value(samples, "partkey_scan_replay_lag_bytes", **labels) >= 0.0
    assert not [k for k in samples if k[0].startswith("partkey_scan_") and dict(k[1])["check"] == "distribution"]


@pytest.mark.slow
def test_replay_lag_moves_while_replay_is_paused(
    pair: StandbyPair, servers: tuple[psycopg.Connection[Any], psycopg.Connection[Any]]
) -> None:
    """Paused replay: scans see the old rows and an older, growing lag; resumed, they agree with the primary again."""
    primary, standby = servers
    exporter = Exporter(_config(pair.dsn("primary", "app"), pair.dsn("standby", "app")))
    full = exporter.runners[("t1", "public.chunks", "verification_full")]
    labels = {"target": "t1", "table": "public.chunks", "check": "verification_full"}
    try:
        primary.execute("CREATE TABLE IF NOT EXISTS ticks (at timestamptz)")
        primary.execute("INSERT INTO ticks VALUES (now())")  # a replayed commit: the lag has a starting point
        pair.catch_up()
        before = _primary_counts(primary)[1]
        standby.execute("SELECT pg_wal_replay_pause()")
        poll(
            lambda: standby.execute("SELECT pg_get_wal_replay_pause_state() = 'paused'").fetchone() == (True,),
            "replay to pause",
        )
        _insert_bad(primary, 3)  # committed on the primary, not replayed on the standby
        flushed = primary.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
        assert flushed is not None
        poll(
            lambda: standby.execute("SELECT pg_last_wal_receive_lsn() >= %s::pg_lsn", flushed).fetchone() == (True,),
            "the standby to receive the new rows",
        )
        first = full.run()
        assert first.success and first.scan is not None
        assert first.payload.mismatched == before  # the standby has not replayed the 3 new bad rows
        assert first.scan.replay_lag_bytes is not None and first.scan.replay_lag_bytes > 0
        lag = value(_samples(exporter), "partkey_scan_replay_lag_seconds", **labels)
        assert lag == first.scan.replay_lag_seconds
        # While replay stays paused, each scan reports an older replay point: the lag grows.

        def older() -> CheckResult | None:
            result = full.run()
            grown = result.scan is not None and (result.scan.replay_lag_seconds or 0.0) > lag
            return result if grown else None

        later = poll(older, "the replay lag to grow")
        assert later is not None and later.payload.mismatched == before
        assert value(_samples(exporter), "partkey_scan_replay_lag_seconds", **labels) > lag
        standby.execute("SELECT pg_wal_replay_resume()")
        pair.catch_up()
        caught_up = full.run()
        assert caught_up.success and caught_up.payload.mismatched == before + 3 == _primary_counts(primary)[1]
        assert caught_up.scan is not None and caught_up.scan.replay_lag_seconds is not None
    finally:
        exporter.stop()


@pytest.fixture
def no_standby_delay(pair: StandbyPair) -> Iterator[None]:
    """max_standby_streaming_delay=0 on the standby: replay cancels a conflicting query at once, not after 30 s."""

    def delay(value: str) -> None:
        with psycopg.connect(pair.dsn("standby"), autocommit=True) as standby:
            standby.execute(f"ALTER SYSTEM SET max_standby_streaming_delay = {value}")
            standby.execute("SELECT pg_reload_conf()")
        # The startup process rereads the file asynchronously: a new session sees the reloaded value too.
        poll(lambda: _setting(pair, "max_standby_streaming_delay") == ("0" if value == "0" else "30s"), "reload")

    delay("0")
    try:
        yield
    finally:
        delay("DEFAULT")


def _setting(pair: StandbyPair, name: str) -> str:
    """A setting as a new session on the standby sees it."""
    with psycopg.connect(pair.dsn("standby"), autocommit=True) as conn:
        row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
        assert row is not None
        return str(row[0])


@pytest.mark.slow
def test_the_first_scan_after_a_standby_restart_succeeds(
    pair: StandbyPair,
    servers: tuple[psycopg.Connection[Any], psycopg.Connection[Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The standby restarted between two scans: the next one notices the closed connection and reconnects first."""
    primary, _ = servers
    exporter = Exporter(_config(pair.dsn("primary", "app"), pair.dsn("standby", "app")))
    full = exporter.runners[("t1", "public.chunks", "verification_full")]
    try:
        assert full.run().success
        pair.restart_standby()
        pair.catch_up()
        again = full.run()
    finally:
        exporter.stop()
    assert again.success, again.error
    assert again.scan is not None and again.scan.in_recovery
    assert again.payload.mismatched == _primary_counts(primary)[1]
    assert "target t1 (scan_dsn) is back up" in caplog.text


def _lock_conflict(
    primary: psycopg.Connection[Any], standby: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture, nth: int
) -> None:
    """Make the standby's replay take an ACCESS EXCLUSIVE lock on chunks, which the blocked scan holds shared."""
    poll(lambda: ("active", "Lock") in _ours(standby), "the scan to wait for the last partition's lock")
    with primary.transaction():
        primary.execute("LOCK TABLE ONLY chunks IN ACCESS EXCLUSIVE MODE")  # not the partition the holder locked
    poll(lambda: caplog.text.count("a recovery conflict canceled the scan") >= nth, f"recovery conflict {nth}")


def _exact_scan_under_conflicts(
    pair: StandbyPair,
    servers: tuple[psycopg.Connection[Any], psycopg.Connection[Any]],
    caplog: pytest.LogCaptureFixture,
    conflicts: int,
    attempts: int | None = None,
) -> tuple[Exporter, CheckResult]:
    """The exact distribution scanned on the standby while replay cancels it `conflicts` times, then let go.

    attempts: a route with this bound (and a short backoff) instead of the default one.
    """
    primary, standby = servers
    exporter = Exporter(_config(pair.dsn("primary", "app"), pair.dsn("standby", "app")))
    exact = exporter.runners[("t1", "public.chunks", "distribution_exact")]
    if attempts is not None:
        assert exact.scan is not None
        exact.scan = ScanRoute(exact.scan.target, attempts=attempts, backoff=0.1)
    caplog.set_level(logging.INFO, logger="exporter.scan_target")
    holder = psycopg.connect(pair.dsn("primary", "app"))
    outcome: list[CheckResult] = []
    try:
        # The last partition locked on the primary, and so on the standby: the scan locks chunks and the first
        # partitions, then waits there, holding them, until the test lets it go.
        holder.execute(f"LOCK TABLE {LAST_PARTITION} IN ACCESS EXCLUSIVE MODE")
        primary.execute("SELECT 1 FROM pg_switch_wal()")  # ship the lock record now
        pair.catch_up()
        worker = threading.Thread(target=lambda: outcome.append(exact.run()))
        worker.start()
        for nth in range(1, conflicts + 1):
            _lock_conflict(primary, standby, caplog, nth)
        holder.commit()  # an attempt left gets every lock
        worker.join(timeout=120)
        assert not worker.is_alive()
    finally:
        holder.close()
        exporter.stop()
    (result,) = outcome
    return exporter, result


@pytest.mark.slow
def test_a_recovery_conflict_is_retried(
    pair: StandbyPair,
    servers: tuple[psycopg.Connection[Any], psycopg.Connection[Any]],
    caplog: pytest.LogCaptureFixture,
    no_standby_delay: None,
) -> None:
    """Replay cancels the scan (SQLSTATE 40001); the retry succeeds, and the report and JSON say it was retried."""
    exporter, result = _exact_scan_under_conflicts(pair, servers, caplog, 1)
    assert result.success, result.error
    assert result.scan is not None and result.scan.conflict_retries == 1
    assert {p.name: p.rows for p in result.payload.partitions} == _primary_counts(servers[0])[2]
    assert "(attempt 1 of 3): canceling statement due to conflict with recovery" in caplog.text
    health = exporter.health("t1", "public.chunks")[0]
    assert "after 1 retry on a recovery conflict" in render_text(health)
    assert render_json(health)["checks"]["distribution_exact"]["scan"]["conflict_retries"] == 1


@pytest.mark.slow
def test_recovery_conflicts_past_the_bound_fail_with_the_reason(
    pair: StandbyPair,
    servers: tuple[psycopg.Connection[Any], psycopg.Connection[Any]],
    caplog: pytest.LogCaptureFixture,
    no_standby_delay: None,
) -> None:
    """Every attempt canceled: the check fails saying so and what to change on the standby; no endless retry."""
    _, result = _exact_scan_under_conflicts(pair, servers, caplog, 2, attempts=2)
    assert not result.success
    assert result.error is not None
    assert result.error.startswith(
        "canceled by a recovery conflict on the standby 2 times in a row (SQLSTATE 40001: canceling statement due to "
        "conflict with recovery)"
    )
    assert "raise max_standby_streaming_delay or turn on hot_standby_feedback" in result.error
