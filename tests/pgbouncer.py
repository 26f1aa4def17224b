"""A real PgBouncer (Debian's `pgbouncer`) in front of the session's server, for the tests of issue 20."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench.ports import EXPORTER_LISTENING, on_free_port, wait_listening
from bench.processes import stop_process
from tests.reliability.harness import CHECKS
from tests.schema import create_list_table, insert_rows
from tests.support import answers_ready, parse, value

PoolMode = Literal["session", "transaction", "statement"]


def pgbouncer_binary() -> str:
    """The pgbouncer executable; in CI a missing one fails the test, elsewhere it skips it."""
    found = shutil.which("pgbouncer") or next(
        (path for path in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(path, os.X_OK)), None
    )
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("pgbouncer is not installed: .ci/run installs Debian's pgbouncer package")
    pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")


@dataclass(frozen=True)
class Bouncer:
    """A running PgBouncer: its port, its log file, and DSNs that reach the server's databases through it."""

    port: int
    log_file: Path
    mode: PoolMode
    _server_params: dict[str, str]

    def dsn(self, server_dsn: str) -> str:
        """server_dsn (same user and database) through this pool."""
        params = {k: str(v) for k, v in conninfo_to_dict(server_dsn).items() if v is not None}
        params.update(host="127.0.0.1", port=str(self.port))
        return make_conninfo(**params)

    def log(self) -> str:
        """PgBouncer's own log so far."""
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


@contextmanager
def pgbouncer(admin_dsn: str, mode: PoolMode = "transaction", **settings: str | int) -> Iterator[Bouncer]:
    """Run PgBouncer with its default settings (plus `settings`) in `mode` on a loopback port, for the block."""
    binary = pgbouncer_binary()
    server = {k: str(v) for k, v in conninfo_to_dict(admin_dsn).items() if v is not None}
    user = server.get("user", "postgres")
    workdir = Path(tempfile.mkdtemp(prefix="partkey-pgbouncer-"))
    (workdir / "userlist.txt").write_text(f'"{user}" "{server.get("password", "")}"\n')
    target = f"host={server.get('host', 'localhost')} port={server.get('port', '5432')}"
    account = None
    if os.geteuid() == 0:
        # PgBouncer refuses to run as root; it drops to the account that owns the server's socket directory
        # (the embedded server's own user), which may reach it, or to Debian's `postgres` for a TCP server.
        host = server.get("host", "")
        account = pwd.getpwuid(os.stat(host).st_uid) if host.startswith("/") else pwd.getpwnam("postgres")
        os.chown(workdir, account.pw_uid, account.pw_gid)

    def start(port: int) -> tuple[subprocess.Popen[bytes], Bouncer]:
        lines = [
            "[databases]",
            f"* = {target}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {port}",
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {workdir / 'userlist.txt'}",
            f"logfile = {workdir / 'pgbouncer.log'}",
            f"pidfile = {workdir / 'pgbouncer.pid'}",
            f"pool_mode = {mode}",
            *(f"{key} = {value}" for key, value in settings.items()),
            *([f"user = {account.pw_name}"] if account else []),
        ]
        (workdir / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
        for name in ("pgbouncer.ini", "userlist.txt"):
            os.chmod(workdir / name, 0o644)
        (workdir / "pgbouncer.log").unlink(missing_ok=True)  # a lost port's words are not this attempt's
        process = subprocess.Popen(
            [binary, str(workdir / "pgbouncer.ini")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        bouncer = Bouncer(port, workdir / "pgbouncer.log", mode, server)

        def output() -> str:
            printed = process.stdout.read().decode(errors="replace") if process.stdout else ""
            return printed + bouncer.log()

        try:
            wait_listening(process, lambda: _answers(bouncer, admin_dsn), output, "pgbouncer", timeout=30)
        except BaseException:
            stop_process(process)
            raise
        return process, bouncer

    try:
        _, (process, bouncer) = on_free_port(start)
        try:
            yield bouncer
        finally:
            stop_process(process)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _answers(bouncer: Bouncer, admin_dsn: str) -> bool:
    """Whether a query goes through the pool."""
    try:
        with psycopg.connect(bouncer.dsn(admin_dsn), autocommit=True, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


DAEMON_CONFIG = """
listen: {{address: 127.0.0.1, port: {port}}}
log_level: info
targets:
  - name: pooled
    dsn: "{dsn}"
    lock_timeout: 1s
    tables:
      - table: chunks
        modulus: {modulus}
        monotonic_column: id
        checks:
          implementation: {{interval: 1s}}
          verification_incremental: {{interval: 1s}}
          verification_sample: {{interval: 1s}}
          verification_full: {{interval: 1s}}
          distribution: {{interval: 1s}}
          distribution_exact: {{enabled: true, interval: 1s}}
          insert_probe: {{enabled: true, interval: 1s, samples: 3}}
"""


@dataclass
class PoolRun:
    """What two daemons and an application saw on one pool: logs, last /metrics of each, the application's errors."""

    logs: list[str]
    metrics: list[str]
    app_errors: list[str]
    app_transactions: int


def _application(dsn: str, stop: threading.Event, errors: list[str], count: list[int]) -> None:
    """An application on the same pool, psycopg 3 defaults: repeats its queries, so psycopg prepares them.

    Each transaction runs its query six times: psycopg prepares it at the fifth run and executes it by name at the
    sixth, on the server connection the transaction holds. The rollback makes psycopg forget its names (and send
    DEALLOCATE ALL to whichever server connection comes next), so none of its own names outlive the transaction
    that prepared them: any 42P05/26000 it sees comes from another client's prepared statements.
    """
    with psycopg.connect(dsn) as app:
        while not stop.is_set():
            try:
                for key in range(6):
                    app.execute("SELECT count(*) FROM chunks WHERE partition_key = %s", (key,)).fetchone()
                app.rollback()
                count[0] += 1
            except psycopg.Error as error:
                errors.append(f"{error.sqlstate}: {str(error).strip().splitlines()[0]}")
                if app.broken:
                    return
                app.rollback()


def _start_daemon(config: Path, log: Path, pool_dsn: str, modulus: int) -> tuple[int, subprocess.Popen[bytes]]:
    """(port, process): `partkey-exporter run` on the pool, bound to a port of its own, its output in log."""

    def start(port: int) -> subprocess.Popen[bytes]:
        config.write_text(DAEMON_CONFIG.format(port=port, dsn=pool_dsn, modulus=modulus))
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "exporter.cli", "run", "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_listening(process, lambda: EXPORTER_LISTENING in log.read_text(), log.read_text, "the daemon", 60)
        except BaseException:
            stop_process(process)
            raise
        return process

    return on_free_port(start)


def run_two_daemons_and_an_application(pool_dsn: str, workdir: Path, seconds: float, modulus: int) -> PoolRun:
    """Two `partkey-exporter run` daemons and one application share the pool for `seconds`; then both stop."""
    daemons: list[tuple[subprocess.Popen[bytes], Path, str]] = []
    stop = threading.Event()
    errors: list[str] = []
    count = [0]
    app = threading.Thread(target=_application, args=(pool_dsn, stop, errors, count), daemon=True)
    metrics: list[str] = []
    try:
        for number in (1, 2):
            log = workdir / f"daemon{number}.log"
            port, process = _start_daemon(workdir / f"daemon{number}.yaml", log, pool_dsn, modulus)
            daemons.append((process, log, f"http://127.0.0.1:{port}"))
        app.start()
        for process, log, url in daemons:
            # Until the first snapshot is published; the daemon's log if it exits first.
            wait_listening(process, partial(answers_ready, url), log.read_text, "the daemon", 60)
        time.sleep(seconds)
        for _, _, url in daemons:
            with urllib.request.urlopen(url + "/metrics", timeout=10) as response:  # noqa: S310 - local test URL
                metrics.append(response.read().decode())
    finally:
        stop.set()
        app.join(timeout=30)
        for process, _, _ in daemons:
            process.send_signal(signal.SIGTERM)
        for process, _, _ in daemons:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    return PoolRun([log.read_text() for _, log, _ in daemons], metrics, errors, count[0])


def assert_clean_run(run: PoolRun) -> None:
    """Zero errors in either daemon's log or the application, every check succeeded on both daemons."""
    for log in run.logs:
        # Warnings may come from the noisy machine (a check overrunning its 1 s interval); errors may not.
        bad = [line for line in log.splitlines() if " ERROR " in line or "Traceback" in line]
        assert not bad, "\n".join(bad)
    assert run.app_errors == []
    assert run.app_transactions > 10
    for text in run.metrics:
        samples = parse(text)
        assert value(samples, "partkey_up", target="pooled") == 1
        for check in CHECKS:
            assert value(samples, "partkey_check_success", target="pooled", table="public.chunks", check=check) == 1, (
                check
            )


def semantik_chunks(conn: psycopg.Connection[Any], modulus: int, rows: int = 500) -> psycopg.Connection[Any]:
    """A LIST-partitioned table with the key trigger and some rows, as semantik has it (per partition before 13)."""
    create_list_table(conn, modulus=modulus, trigger="parent" if conn.info.server_version >= 130000 else "partitions")
    insert_rows(conn, rows, modulus=modulus)
    return conn
