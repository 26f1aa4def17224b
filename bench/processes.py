"""Stopping the child processes tests and benchmarks start: one copy for both (tests import it from here)."""

from __future__ import annotations

import subprocess
from typing import Any


def stop_process(process: subprocess.Popen[Any], grace: float = 10) -> None:
    """SIGTERM, wait up to GRACE seconds, then SIGKILL and reap: no child outlives its test or benchmark."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
