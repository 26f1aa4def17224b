"""partkey-migrate's progress display on a terminal: batches with rows, total, rate and ETA; scans; index builds.

Shown only when stderr is a terminal (rich decides, honouring TERM=dumb, NO_COLOR and FORCE_TERMINAL); on a
pipe or a file every call here is a no-op, so the one-line-per-step logs and --json output stay exactly as
they were. The display is transient: it is erased when its step ends, leaving the step's own log line.
rich rather than tqdm: it is already installed (through a dependency), renders several columns and a spinner
for steps without a total (VALIDATE, verification), and does not interleave with our log lines.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg import sql
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from migrations.catalog import table_size
from migrations.options import Options
from migrations.sqlgen import safe_expression

POLL_SECONDS = 0.5  # how often an index build's progress is read from pg_stat_progress_create_index
_open: list[Progress] = []


class _Rate(ProgressColumn):
    """Rows per second, from rich's moving estimate."""

    def render(self, task: Task) -> Text:
        """'12,345 rows/s', or nothing before the second batch."""
        return Text(f"{task.speed:,.0f} rows/s" if task.speed else "", style="progress.data.speed")


def _console() -> Console | None:
    """A console on stderr as it is now (tests and callers may redirect it), or None when it is no terminal."""
    console = Console(file=sys.stderr, stderr=True)
    return console if console.is_terminal else None


def _start(console: Console, *columns: str | ProgressColumn) -> Progress:
    """A transient display, remembered so stop_all() can end it on an error path."""
    display = Progress(*columns, console=console, transient=True, redirect_stdout=False, redirect_stderr=False)
    display.start()
    _open.append(display)
    return display


def _stop(display: Progress) -> None:
    """End a display (once)."""
    if display in _open:
        _open.remove(display)
        display.stop()


def stop_all() -> None:
    """End every display still shown: the CLI calls this before printing an error."""
    for display in list(_open):
        _stop(display)


class Rows:
    """Rows done, total, rate and ETA for a batched step; call it with each batch's row count, then close()."""

    def __init__(self, label: str, total: Callable[[], int | None]) -> None:
        console = _console()
        self._display: Progress | None = None
        if console is None:
            return
        self._display = _start(
            console,
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows"),
            _Rate(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        # The total is only counted when it is shown (it may cost a scan).
        self._task = self._display.add_task(label, total=total())

    def __call__(self, rows: int) -> None:
        """One batch done."""
        if self._display is not None:
            self._display.advance(self._task, rows)

    def close(self) -> None:
        """The step is over: erase the display."""
        if self._display is not None:
            _stop(self._display)


def rows(label: str, total: Callable[[], int | None]) -> Rows:
    """A rows display for a batched step (backfill, repair); a no-op off a terminal."""
    return Rows(label, total)


@contextlib.contextmanager
def activity(label: str, when: bool = True) -> Iterator[None]:
    """A spinner with the time elapsed while a step without a row count runs (VALIDATE, a verification scan)."""
    console = _console() if when else None
    if console is None:
        yield
        return
    display = _start(console, SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    display.add_task(label, total=None)
    try:
        yield
    finally:
        _stop(display)


@contextlib.contextmanager
def index_build(conn: psycopg.Connection[Any], label: str) -> Iterator[None]:
    """CREATE INDEX CONCURRENTLY's phase and blocks or tuples done, read from a second connection."""
    console = _console()
    if console is None:
        yield
        return
    display = _start(
        console, SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[done]}")
    )
    task = display.add_task(label, total=None, done="")
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(conn, display, task, label, stop), daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join(timeout=5)
        _stop(display)


def _watch(conn: psycopg.Connection[Any], display: Progress, task: Any, label: str, stop: threading.Event) -> None:
    """Poll pg_stat_progress_create_index for the build's backend; a failure only ends the polling."""
    pid = conn.info.backend_pid
    conninfo = psycopg.conninfo.make_conninfo(conn.info.dsn, password=conn.info.password or None)
    try:
        with psycopg.connect(conninfo, autocommit=True, application_name="partkey-migrate progress") as watcher:
            while not stop.wait(POLL_SECONDS):
                row = watcher.execute(
                    "SELECT phase, blocks_done, blocks_total, tuples_done, tuples_total "
                    "FROM pg_stat_progress_create_index WHERE pid = %s",
                    (pid,),
                ).fetchone()
                if row is None:
                    continue
                phase, blocks_done, blocks_total, tuples_done, tuples_total = row
                done, total, unit = (
                    (blocks_done, blocks_total, "blocks") if blocks_total else (tuples_done, tuples_total, "tuples")
                )
                display.update(
                    task,
                    description=f"{label}: {phase}",
                    total=total or None,
                    completed=done,
                    done=f"{done:,}/{total:,} {unit}" if total else "",
                )
    except psycopg.Error:
        return  # no second connection (or PostgreSQL 11, which has no such view): the spinner stays


def wrong_keys(conn: psycopg.Connection[Any], options: Options) -> int:
    """How many rows repair will fix: one counting scan, run only when the display is shown."""
    spec = options.spec
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE {} IS DISTINCT FROM {}").format(
            spec.table_ident, sql.Identifier(spec.key_column), safe_expression(spec)
        )
    ).fetchone()
    return int(row[0]) if row else 0


def estimated_rows(conn: psycopg.Connection[Any], options: Options) -> int | None:
    """The planner's row estimate for a backfill's total (None before the first ANALYZE: no ETA then)."""
    return table_size(conn, options.spec).rows or None
