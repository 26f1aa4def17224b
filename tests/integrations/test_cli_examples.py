"""The CLI commands docs/integrations.md shows, on the same table with three wrong keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg

from tests.integrations.common import EXAMPLES, MODULUS, ROWS, three_wrong_keys

CLI = str(Path(sys.executable).parent / "partkey-exporter")  # the one installed with this interpreter


def test_report_and_verify_as_the_examples_readme_shows(conn: psycopg.Connection[Any], dsn: str) -> None:
    three_wrong_keys(conn)
    readme = (EXAMPLES.parent / "docs" / "integrations.md").read_text()
    assert "partkey-exporter verify --mode full" in readme and "partkey-exporter report --format json" in readme
    env = {**os.environ, "PARTKEY_DSN": dsn}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CLI, *args, "--modulus", str(MODULUS)], env=env, capture_output=True, text=True, timeout=60
        )

    verify = run("verify", "--mode", "full")
    assert verify.returncode == 1, verify.stderr
    assert f"default/public.chunks: {ROWS} rows checked (full), 3 wrong keys, 0 NULL keys" in verify.stdout
    report = run("report", "--format", "json")
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert data["status"] == "unhealthy" and data["tables"][0]["verification"]["mismatched"] == 3
