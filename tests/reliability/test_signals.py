"""Signals on the real daemon, beyond tests/test_daemon.py: SIGTERM and SIGHUP while a check is stuck on a lock,
a reload that changes what is watched, and a reload refused for a semantic (not syntax) error."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import psycopg

from tests.reliability.harness import (
    answered,
    get,
    our_backends,
    our_lock_waits,
    scrape,
    start_daemon,
    write_daemon_config,
)
from tests.schema import create_list_table, insert_rows
from tests.support import Samples, parse, poll

STUCK = {
    "verification_full": "{interval: 1s, statement_timeout: 60s}",
    "implementation": "{interval: 1s, statement_timeout: 60s}",
}


def _up(url: str, target: str) -> float | None:
    return get(answered(url), "partkey_up", target=target)


def _checked_since(url: str, target: str, since: float) -> Samples:
    """The samples on /metrics once TARGET's implementation check has succeeded at or after SINCE, else none."""
    samples = answered(url)
    labels = {"target": target, "table": "public.chunks", "check": "implementation"}
    succeeded = get(samples, "partkey_check_last_success_timestamp_seconds", **labels)
    return samples if succeeded is not None and succeeded >= since else {}


def _prepare(conn: psycopg.Connection[Any]) -> None:
    create_list_table(conn, modulus=4, trigger=None)
    insert_rows(conn, 200, modulus=4)


def test_sigterm_while_a_check_waits_on_a_lock(conn: psycopg.Connection[Any], dsn: str, tmp_path: Path) -> None:
    _prepare(conn)
    path = tmp_path / "partkey.yaml"
    port, daemon = start_daemon(
        path, lambda port: write_daemon_config(path, dsn, port, checks=STUCK, lock_timeout="60s")
    )
    url = f"http://127.0.0.1:{port}"
    try:
        poll(lambda: _up(url, "live") == 1, "the daemon up", step=0.2)
        with psycopg.connect(dsn) as locker:
            locker.execute("LOCK TABLE chunks IN ACCESS EXCLUSIVE MODE")
            poll(lambda: our_lock_waits(conn), "a check stuck on the lock")
            elapsed = daemon.stop()
            # The lock is still held: the daemon must not have waited for its stuck query to give up.
            left = poll(lambda: not our_backends(conn), "our connection closed") and our_backends(conn)
            locker.rollback()
    except AssertionError as error:
        raise AssertionError(f"{error}\n--- daemon log ---\n{daemon.log[-6000:]}") from None
    finally:
        daemon.stop()
    assert daemon.process.returncode == 0, daemon.log
    # The stuck query would hold on for lock_timeout (60 s); anything well under that proves nobody waited for it.
    assert elapsed < 30, f"SIGTERM took {elapsed:.1f}s with a check stuck on a lock"
    assert "Traceback" not in daemon.log
    assert "partkey-exporter stopped" in daemon.log
    assert left == []


def test_sighup_reload_changes_targets_and_refuses_a_bad_value(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Path
) -> None:
    _prepare(conn)
    path = tmp_path / "partkey.yaml"
    port, daemon = start_daemon(path, lambda port: write_daemon_config(path, dsn, port, name="before"))
    url = f"http://127.0.0.1:{port}"
    try:
        poll(lambda: _up(url, "before") == 1, "the daemon up", step=0.2)
        write_daemon_config(path, dsn, port, name="after")
        daemon.signal(signal.SIGHUP)
        poll(lambda: _up(url, "after") == 1, "the reloaded target up", step=0.2)
        samples = parse(scrape(url)[2])
        # A semantic error (modulus 0): refused with its location, and 'after' keeps running.
        write_daemon_config(path, dsn, port, name="third", modulus=0)
        daemon.signal(signal.SIGHUP)
        poll(lambda: "reload refused" in daemon.log, "the refusal logged")
        # A file that is not YAML at all: refused the same way.
        path.write_text("targets: [oops")
        daemon.signal(signal.SIGHUP)
        poll(lambda: "YAML syntax error" in daemon.log, "the syntax error logged")
        refused_at = time.time()
        # 'after' still runs: a check of it succeeds after both refusals (evidence, not a sleep).
        kept = poll(lambda: _checked_since(url, "after", refused_at), "a check of 'after' after the refusals")
        connections = our_backends(conn)
        # SIGHUP while a check is stuck on a lock: the reload must not wait for it.
        write_daemon_config(path, dsn, port, name="fourth", checks=STUCK, lock_timeout="60s")
        daemon.signal(signal.SIGHUP)
        poll(lambda: _up(url, "fourth") == 1, "the fourth config up", step=0.2)
        with psycopg.connect(dsn) as locker:
            locker.execute("LOCK TABLE chunks IN ACCESS EXCLUSIVE MODE")
            poll(lambda: our_lock_waits(conn), "a check stuck on the lock")
            write_daemon_config(path, dsn, port, name="fifth")
            reloading = time.monotonic()
            daemon.signal(signal.SIGHUP)
            poll(lambda: _up(url, "fifth") is not None, "the fifth config served", step=0.1)
            reload_seconds = time.monotonic() - reloading
            locker.rollback()
        poll(lambda: _up(url, "fifth") == 1, "the fifth config up", step=0.2)
        poll(lambda: len(our_backends(conn)) == 1, "the old connection closed")
    except AssertionError as error:
        raise AssertionError(f"{error}\n--- daemon log ---\n{daemon.log[-6000:]}") from None
    finally:
        daemon.stop()
    assert get(samples, "partkey_up", target="after") == 1
    assert not [k for k in samples if ("target", "before") in k[1]]  # the old target's series are gone
    assert get(kept, "partkey_up", target="after") == 1 and get(kept, "partkey_up", target="third") is None
    assert len(connections) == 1
    refused = [line for line in daemon.lines if "reload refused" in line]
    assert len(refused) == 2 and "YAML syntax error" in refused[1], refused
    assert "partkey.yaml:" in refused[0] and "targets[0].tables[0].modulus" in refused[0]
    assert "greater than or equal to 1" in refused[0]
    assert reload_seconds < 30, f"reload took {reload_seconds:.1f}s with a check stuck on a lock"
    assert "Traceback" not in daemon.log
    assert daemon.process.returncode == 0
