"""Helpers for exporter tests: configs, a running HTTP server, and a /metrics parser."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

# Re-exported for the tests that import it from here; benchmarks use it too, so it lives in bench/.
from bench.processes import stop_process as stop_process
from exporter.app import Exporter
from exporter.config import Config, ListenConfig, parse_config
from exporter.http import ExporterHTTPServer, serve_in_thread


def config_for(dsn: str, table_yaml: str = "", extra: str = "", name: str = "t1") -> Config:
    """A one-target, one-table config for the test's database."""
    body = table_yaml.strip().replace("\n", "\n        ")
    return parse_config(
        f"""
{extra}
targets:
  - name: {name}
    dsn: "{dsn}"
    tables:
      - table: chunks
        {body}
""",
        "<test>",
    )


@contextmanager
def serving(exporter: Exporter, listen: ListenConfig | None = None) -> Iterator[ExporterHTTPServer]:
    """Serve the exporter on a free local port for the duration of the block."""
    server, _ = serve_in_thread(exporter, listen or ListenConfig(address="127.0.0.1", port=0))
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        exporter.stop()


@contextmanager
def held_elsewhere(lock: AbstractContextManager[Any]) -> Iterator[None]:
    """LOCK held by another thread for the duration of the block, as a concurrent request would hold it."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            holding.set()
            release.wait(120)  # released at the block's end; the timeout only keeps a broken test from hanging

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(60), "the other thread never got the lock"  # a hang guard
        yield
    finally:
        release.set()
        holder.join()


def http(
    url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 30
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one request; HTTP errors are returned, not raised."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - local test URLs
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample keyed by (name, sorted labels); fails on a duplicate series."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"duplicate series on /metrics: {key}"
            samples[key] = sample.value
    return samples


def metrics(base_url: str) -> Samples:
    """Every sample on /metrics keyed by (name, sorted labels); fails on a duplicate series."""
    status, _, body = http(base_url + "/metrics")
    assert status == 200
    return parse(body.decode())


def assert_unhealthy_report(base_url: str, *, method: str, mismatched: int, checked: int, chunks: int) -> None:
    """The admin health JSON, its text report and /report agree on an unhealthy table with MISMATCHED wrong keys."""
    status, _, body = http(base_url + "/admin/partition/health")
    data = json.loads(body)
    assert status == 200 and data["status"] == "unhealthy"
    table = data["tables"][0]
    assert table["verification"]["mismatched"] == mismatched
    assert table["implementation"]["method"] == method
    status, headers, text = http(base_url + "/admin/partition/health/report")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    lines = text.decode().splitlines()
    assert lines[1] == "PARTITION KEY IMPLEMENTATION HEALTH REPORT"
    assert f"  Incorrect Keys: {mismatched}" in lines and f"  Records Checked: {checked}" in lines
    assert "  Validation: FAILED" in lines and f"  Current Method: {method.upper()}" in lines
    assert f"  Total Chunks: {chunks}" in lines
    same = http(base_url + "/report?format=json&target=t1")
    assert json.loads(same[2])["tables"][0]["verification"]["mismatched"] == mismatched


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample with exactly these labels."""
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"{name}{labels} not on /metrics; have: {sorted(k for k in samples if k[0] == name)}"
    return samples[key]


def names_with(samples: Samples, name: str) -> list[dict[str, Any]]:
    """Label sets of every sample of one metric."""
    return [dict(labels) for (n, labels) in samples if n == name]


T = TypeVar("T")


def poll(predicate: Callable[[], T], what: str, timeout: float = 60.0, step: float = 0.05) -> T:
    """predicate()'s first truthy value; fail naming what after a generous deadline (never a bound on speed)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(step)


def assert_lock_timeout(error: str | None, setting: str) -> None:
    """error is a check's one line for a lock wait that lock_timeout (as the target spells it) cut short."""
    assert error is not None
    assert error.startswith(f"lock wait exceeded lock_timeout={setting}: canceling statement due to lock timeout")
    assert error.endswith("(SQLSTATE 55P03)")


def answers_ready(url: str, context: ssl.SSLContext | None = None) -> bool:
    """Whether url's /readyz answers 200 (the daemon has its first snapshot)."""
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2, context=context) as response:  # noqa: S310
            return bool(response.status == 200)
    except OSError:
        return False


def read_terminal(fd: int) -> bytes:
    """Everything a child writes to the pseudo-terminal whose controlling side is fd, until it closes it; closes fd."""
    received = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        received += chunk
    os.close(fd)
    return received


def self_signed_certificate(directory: Path, name: str, san: str | None = None) -> tuple[Path, Path]:
    """A fresh self-signed certificate and key (CN=name, optional subjectAltName) made with the openssl command."""
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    extension = ["-addext", f"subjectAltName={san}"] if san else []
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}"]
    subprocess.run(
        [*command, *extension, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key
