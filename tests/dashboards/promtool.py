"""Finding promtool: CI must have it (a skipped rule test there would hide broken alerts)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def require_promtool() -> str:
    """Path of promtool; FAIL when CI=true and it is missing, skip with the reason otherwise."""
    path = shutil.which("promtool")
    if path is not None:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail("promtool is not on PATH but CI=true: install the Debian package `prometheus`")
    pytest.skip("promtool not on PATH; install the Debian package `prometheus` to run the rule tests")


def run_promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run promtool with a timeout and captured output."""
    return subprocess.run(
        [require_promtool(), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )
