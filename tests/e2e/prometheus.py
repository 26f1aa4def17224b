"""A real Prometheus (Debian's 2.42) for end-to-end tests: start it, scrape the exporter, query its API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bench.ports import on_free_port, wait_listening
from bench.processes import stop_process


def require_binary(name: str) -> str:
    """The binary's path; in CI a missing binary fails the test, locally it skips saying why."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found: apt-get install prometheus (Debian's package ships {name})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@contextmanager
def running_prometheus(
    scrape_target: str, rule_files: list[Path] | None = None, scrape_interval: str = "1s"
) -> Iterator[str]:
    """Run Prometheus scraping host:port every second; yield its base URL."""
    binary = require_binary("prometheus")
    workdir = Path(tempfile.mkdtemp(prefix="partkey-prom-"))
    rules = "".join(f"\n  - {path}" for path in rule_files or [])
    (workdir / "prometheus.yml").write_text(
        f"""global:
  scrape_interval: {scrape_interval}
  evaluation_interval: {scrape_interval}
rule_files:{rules or " []"}
scrape_configs:
  - job_name: partkey-exporter  # the job name the dashboards and PartkeyExporterDown expect
    static_configs:
      - targets: ["{scrape_target}"]
"""
    )
    log_path = workdir / "prometheus.log"

    def start(port: int) -> subprocess.Popen[bytes]:
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--web.enable-lifecycle",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_listening(process, lambda: _ready(port), log_path.read_text, "prometheus", timeout=60)
        except BaseException:
            stop_process(process, grace=15)
            raise
        return process

    try:
        port, process = on_free_port(start)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop_process(process, grace=15)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _ready(port: int) -> bool:
    """Whether the Prometheus on port answers /-/ready."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def query(prometheus_url: str, expression: str) -> list[dict[str, Any]]:
    """The result vector of an instant query; raises on a PromQL error."""
    url = f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310
        body = json.loads(response.read())
    if body["status"] != "success":
        raise AssertionError(f"{expression}: {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def wait_for(prometheus_url: str, expression: str, timeout: float = 60) -> list[dict[str, Any]]:
    """Poll a query until it returns at least one series."""
    deadline = time.monotonic() + timeout
    while True:
        result = query(prometheus_url, expression)
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.5)
