"""partkey-migrate's progress display: on a terminal (a pseudo-terminal here) and never on a pipe."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys
import threading
from typing import Any

import psycopg
import pytest
from rich.console import Console

from migrations import progress
from tests.migrations.helpers import ROOT, cli, drift
from tests.migrations.test_generated_strategy import create_plain
from tests.schema import create_list_table, insert_rows
from tests.support import poll, read_terminal

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
ETA = re.compile(r"repair public\.chunks .*?\d[\d,]*/[\d,]+ rows .*?ETA \d+:\d\d:\d\d")


def run_on_terminal(dsn: str, *args: str) -> tuple[int, str, str]:
    """partkey-migrate with stderr on a pseudo-terminal: exit code, stdout, and what the terminal received."""
    controller, terminal = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160"}
    for name in ("NO_COLOR", "TERM_PROGRAM", "CI", "FORCE_TERMINAL"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "migrations.cli", *args, "--dsn", dsn, "--modulus", "10"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=terminal,
        env=env,
        text=True,
    )
    os.close(terminal)
    received = read_terminal(controller)
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, out, ANSI.sub("", received.decode("utf-8", "replace"))


def run_on_pipe(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    """partkey-migrate with stdout and stderr on pipes, as in CI or `2>log`."""
    return subprocess.run(
        [sys.executable, "-m", "migrations.cli", *args, "--dsn", dsn, "--modulus", "10"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def drifted_list_table(conn: psycopg.Connection[Any], rows: int, wrong: int) -> None:
    """A LIST table with `wrong` rows whose key went stale through an UPDATE."""
    create_list_table(conn, modulus=10, trigger="parent")
    insert_rows(conn, rows, modulus=10)
    drift(conn, wrong)


def test_repair_on_a_terminal_shows_rows_total_rate_and_eta(conn: psycopg.Connection[Any], dsn: str) -> None:
    drifted_list_table(conn, rows=20_000, wrong=6_000)
    code, out, terminal = run_on_terminal(dsn, "repair", "--batch-size", "200")
    assert code == 0, terminal
    assert ETA.search(terminal), terminal[-2000:]
    assert "/6,000 rows" in terminal or "/6000 rows" in terminal
    assert "rows/s" in terminal
    # The verification after the repair shows a spinner with its elapsed time.
    assert re.search(r"verifying every key of public\.chunks\s+\d:\d\d:\d\d", terminal)
    # stdout is what it always was: the batch lines and the summary, no escape codes.
    assert re.search(r"repair: fixed 6000 row\(s\) in \d+ batch\(es\)", out) and "\x1b" not in out


def test_repair_on_a_pipe_prints_plain_lines_and_no_display(conn: psycopg.Connection[Any], dsn: str) -> None:
    drifted_list_table(conn, rows=5_000, wrong=1_000)
    run = run_on_pipe(dsn, "repair", "--batch-size", "200")
    assert run.returncode == 0, run.stderr
    assert "ETA" not in run.stderr and "rows/s" not in run.stderr and "\x1b" not in run.stderr + run.stdout
    assert "batch 1: fixed " in run.stdout and "repair: fixed 1000 row(s) in " in run.stdout


def test_upgrade_on_a_terminal_shows_validate_and_index_builds(conn: psycopg.Connection[Any], dsn: str) -> None:
    create_plain(conn, rows=3000)
    code, out, terminal = run_on_terminal(dsn, "upgrade")
    assert code == 0, terminal
    assert "upgrade finished" in out
    # Each concurrent index build has its own display line (phase and counts once the poller has read them).
    for index in ("chunks_pkey", "chunks_key_id_uq", "chunks_key_idx"):
        assert re.search(rf"step \d/\d build-index:{index}", terminal), terminal[-3000:]
    # The step's own log line is still there, after the display.
    assert re.search(r"partkey-migrate: step \d/\d build-index:chunks_pkey: done in", terminal)


def test_downgrade_backfill_on_a_terminal_shows_rows_total_rate_and_eta(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    create_plain(conn, rows=10_000)
    assert cli(dsn, "upgrade").code == 0
    conn.execute("ANALYZE chunks")  # the backfill's total is the planner's estimate
    code, out, terminal = run_on_terminal(dsn, "downgrade", "--batch-size", "200")
    assert code == 0, terminal
    assert re.search(r"step backfill .*?\d[\d,]*/10,?000 rows .*?ETA \d+:\d\d:\d\d", terminal), terminal[-3000:]
    assert "downgrade finished" in out


def test_upgrade_json_on_a_terminal_keeps_stdout_one_document(conn: psycopg.Connection[Any], dsn: str) -> None:
    create_list_table(conn, modulus=10, trigger="parent")
    insert_rows(conn, 2000, modulus=10)
    code, out, terminal = run_on_terminal(dsn, "upgrade", "--json")
    assert code == 0, terminal
    assert out.lstrip().startswith("{") and out.rstrip().endswith("}") and "\x1b" not in out
    assert re.search(r"step \d/\d validate\S*\s+\d:\d\d:\d\d", terminal), terminal[-3000:]


def test_index_build_display_shows_the_phase_postgresql_reports(
    conn: psycopg.Connection[Any], dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_list_table(conn, modulus=10, trigger=None)
    insert_rows(conn, 1000, modulus=10)
    screen = io.StringIO()
    monkeypatch.setattr(progress, "_console", lambda: Console(file=screen, force_terminal=True, width=160))
    monkeypatch.setattr(progress, "POLL_SECONDS", 0.05)
    build = CreateIndex(dsn)
    # An uncommitted write makes CREATE INDEX CONCURRENTLY wait in a phase the view reports, for as long as we like.
    with psycopg.connect(dsn) as writer:
        writer.execute("INSERT INTO chunks_part_01 (collection_id, partition_key) VALUES (gen_random_uuid(), 1)")
        build.start()
        poll(lambda: build.waiting(conn), "CREATE INDEX CONCURRENTLY to wait for the writer")
        poll(lambda: "waiting for writers before build" in screen.getvalue(), "the display to show the phase")
        writer.rollback()
    build.join()
    assert "step 1/1 build-index:chunks_part_01_idx: waiting for writers before build" in ANSI.sub(
        "", screen.getvalue()
    )


class CreateIndex(threading.Thread):
    """CREATE INDEX CONCURRENTLY under progress.index_build, on its own connection."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.pid = 0

    def run(self) -> None:
        """Build the index while the display polls."""
        with psycopg.connect(self.dsn, autocommit=True) as builder:
            self.pid = builder.info.backend_pid
            with progress.index_build(builder, "step 1/1 build-index:chunks_part_01_idx"):
                builder.execute("CREATE INDEX CONCURRENTLY chunks_part_01_idx ON chunks_part_01 (created_at)")

    def waiting(self, conn: psycopg.Connection[Any]) -> bool:
        """True once the build shows in pg_stat_progress_create_index."""
        row = conn.execute("SELECT count(*) FROM pg_stat_progress_create_index WHERE pid = %s", (self.pid,)).fetchone()
        return bool(row and row[0])
