"""`make demo` as a user runs it: the report, the URLs, the stale keys, and a clean stop on SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from bench.ports import IN_USE, PortTaken, on_free_port
from tests.support import http, metrics, value


def _postgres_children(datadir: str) -> list[psutil.Process]:
    """postgres processes still running on the demo's data directory."""
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        try:
            if process.info["name"] == "postgres" and datadir in " ".join(process.info["cmdline"] or []):
                found.append(process)
        except psutil.Error:
            continue
    return found


def _start(port: int) -> tuple[subprocess.Popen[str], list[str]]:
    """The demo on port, and what it printed up to "Press Ctrl-C" (or its end); PortTaken when it lost the port."""
    demo = subprocess.Popen(
        [sys.executable, "-m", "exporter.cli", "demo", "--rows", "5000", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert demo.stdout is not None
    lines: list[str] = []
    # A hang guard under the test's 480 s timeout: initdb and the load took over 120 s on a loaded 2-core machine.
    deadline = time.monotonic() + 360
    while time.monotonic() < deadline:
        line = demo.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith("Press Ctrl-C"):
            return demo, lines
    if demo.poll() is not None and IN_USE in "\n".join(lines).lower():
        raise PortTaken(f"demo on port {port}")
    return demo, lines


# Start (initdb, load), report and stop take over a minute on a loaded 2-core machine: more than the 120 s default.
@pytest.mark.timeout(480)
def test_demo_runs_reports_and_stops_cleanly() -> None:
    port, (demo, lines) = on_free_port(_start)
    output = "\n".join(lines)
    datadir = re.search(r"embedded PostgreSQL in (\S+) \.\.\.", output)
    try:
        assert "PARTITION KEY IMPLEMENTATION HEALTH REPORT" in output
        assert "  Current Method: TRIGGER" in lines and "  Incorrect Keys: 7" in lines
        assert "  Total Chunks: 5,000" in lines
        assert f"http://127.0.0.1:{port}/metrics" in output
        urls = re.findall(r"http://127\.0\.0\.1:\d+\S*", output)
        assert urls[0] == f"http://127.0.0.1:{port}/"  # the status page is the first thing it points to
        status, headers, page = http(urls[0])
        assert status == 200 and "Content-Security-Policy" in headers and b'class="bar' in page
        samples = metrics(f"http://127.0.0.1:{port}")
        assert value(samples, "partkey_mismatched_rows", target="demo", table="public.chunks", mode="full") == 7
    finally:
        demo.send_signal(signal.SIGTERM)
        # A hang guard, not a speed test: stopping the embedded server took over 30 s on a loaded 2-core machine.
        demo.communicate(timeout=180)
    assert demo.returncode == 0  # SIGTERM stopped it
    assert datadir is not None
    # The server's processes exit a moment after pg_ctl returns: poll for them to be gone, with a generous deadline.
    deadline = time.monotonic() + 60
    while _postgres_children(datadir.group(1)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _postgres_children(datadir.group(1)) == []
