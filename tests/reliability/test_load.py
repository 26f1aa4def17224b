"""Load on the real daemon, localhost only and bounded: 50 concurrent scrapers while checks run, and a soak.

The figures (p50/p99/max scrape, RSS, threads, connections) are printed; `make test-reliability` shows them."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from tests.reliability.harness import Daemon, get, our_backends, scrape, start_daemon, write_daemon_config
from tests.schema import create_list_table, insert_rows
from tests.support import parse, poll

SCRAPERS = 50
SOAK_SECONDS = float(os.environ.get("PARTKEY_SOAK_SECONDS", "600"))
CHECKS = {
    "verification_full": "{interval: 2s}",
    "distribution_exact": "{interval: 2s}",
    "verification_sample": "{interval: 2s, percent: 10}",
    "insert_probe": "{enabled: true, interval: 1s}",
}


@dataclass
class Load:
    """Results of scrapers hammering /metrics."""

    durations: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: int = 0

    def percentile(self, share: float) -> float:
        ordered = sorted(self.durations)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def hammer(url: str, scrapers: int, seconds: float) -> Load:
    """`scrapers` threads GET /metrics back to back on fresh connections for `seconds`; every answer checked."""
    load = Load()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def scraper() -> None:
        while time.monotonic() < deadline:
            try:
                status, took, body = scrape(url, timeout=10)
                problem = None if status == 200 and "partkey_up" in body else f"status {status}"
            except Exception as error:  # a refused, reset or timed-out scrape is what we count here
                took, problem = 0.0, f"{type(error).__name__}: {error}"
            with lock:
                load.requests += 1
                if problem is None:
                    load.durations.append(took)
                else:
                    load.errors.append(problem)

    threads = [threading.Thread(target=scraper, daemon=True) for _ in range(scrapers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    return load


@pytest.fixture
def daemon(conn: psycopg.Connection[Any], dsn: str, tmp_path: Path) -> Iterator[tuple[Daemon, str]]:
    """The daemon on a 100-partition table (a realistic /metrics size), every check on, short intervals."""
    create_list_table(conn, modulus=100, trigger="parent")
    insert_rows(conn, 20_000, modulus=100, collections=500)
    conn.execute("ANALYZE chunks")
    path = tmp_path / "partkey.yaml"
    port, running = start_daemon(path, lambda port: write_daemon_config(path, dsn, port, modulus=100, checks=CHECKS))
    url = f"http://127.0.0.1:{port}"
    try:
        poll(lambda: _ready(url), "every check succeeded once", step=0.2)
        yield running, url
    finally:
        elapsed = running.stop()
        assert elapsed < 30 and "Traceback" not in running.log, running.log[-3000:]


def _ready(url: str) -> bool:
    try:
        status, _, body = scrape(url, timeout=2)
    except OSError:
        return False
    samples = parse(body)
    checks = [labels for (name, labels) in samples if name == "partkey_check_success"]
    return status == 200 and len(checks) == 6 and all(samples[("partkey_check_success", c)] == 1 for c in checks)


def _report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        print(f"\n[reliability] {line}")


def _load_test(
    daemon: tuple[Daemon, str], conn: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str], seconds: float
) -> None:
    running, url = daemon
    process = psutil.Process(running.process.pid)
    cold = process.memory_info().rss
    hammer(url, SCRAPERS, 3)  # warm-up: the server's threads, buffers and encoded bodies exist from now on
    start = process.memory_info().rss
    load = hammer(url, SCRAPERS, seconds)
    end = process.memory_info().rss
    samples = parse(scrape(url)[2])
    connections = our_backends(conn)
    p50, p99 = load.percentile(0.50), load.percentile(0.99)
    _report(
        capsys,
        f"load {SCRAPERS} scrapers x {seconds:.0f}s: {load.requests} scrapes, {len(load.errors)} errors, "
        f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {max(load.durations) * 1000:.1f} ms; "
        f"RSS cold {cold / 2**20:.1f} MiB, start {start / 2**20:.1f} MiB, end {end / 2**20:.1f} MiB",
    )
    assert load.errors == [], load.errors[:5]
    # Every scraper got answers (the latency is reported above, never gated: the machine is shared and noisy).
    assert load.requests >= SCRAPERS * 2, load.requests
    assert end <= start * 1.10, (start, end)  # memory flat: within 10 % of the start
    # The checks kept running under the load and the database saw one connection.
    assert all(v == 1 for (name, _), v in samples.items() if name == "partkey_check_success")
    assert get(samples, "partkey_up", target="live") == 1
    assert len(connections) == 1


def test_fifty_scrapers_for_five_seconds(
    daemon: tuple[Daemon, str], conn: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    _load_test(daemon, conn, capsys, 5)


@pytest.mark.slow
def test_fifty_scrapers_for_thirty_seconds(
    daemon: tuple[Daemon, str], conn: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    _load_test(daemon, conn, capsys, 30)


@pytest.mark.slow
@pytest.mark.timeout(SOAK_SECONDS + 300)
def test_soak(daemon: tuple[Daemon, str], conn: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]) -> None:
    """PARTKEY_SOAK_SECONDS (default 600) of steady scrapes and checks: no growth in RSS, threads or connections."""
    running, url = daemon
    process = psutil.Process(running.process.pid)
    figures: list[tuple[float, int, int, int, int]] = []  # (t, rss, threads, fds, db connections)
    stop = threading.Event()
    load = Load()

    def steady() -> None:  # 5 scrapers back to back: far above a real Prometheus, a tenth of the load test
        while not stop.is_set():
            part = hammer(url, 5, 5)
            load.requests += part.requests
            load.errors.extend(part.errors)
            load.durations.extend(part.durations)

    scraping = threading.Thread(target=steady, daemon=True)
    scraping.start()
    started = time.monotonic()
    step = max(5.0, SOAK_SECONDS / 60)
    while time.monotonic() - started < SOAK_SECONDS:
        figures.append(
            (
                time.monotonic() - started,
                process.memory_info().rss,
                process.num_threads(),
                process.num_fds(),
                len(our_backends(conn)),
            )
        )
        time.sleep(step)
    stop.set()
    scraping.join(30)
    samples = parse(scrape(url)[2])
    warm = [f for f in figures if f[0] >= min(60.0, SOAK_SECONDS / 5)]  # after the first minute
    first, last = warm[: max(1, len(warm) // 4)], warm[-max(1, len(warm) // 4) :]
    rss_first, rss_last = max(f[1] for f in first), max(f[1] for f in last)
    _report(
        capsys,
        f"soak {SOAK_SECONDS:.0f}s: {load.requests} scrapes, {len(load.errors)} errors, "
        f"p99 {load.percentile(0.99) * 1000:.1f} ms; RSS first quarter max {rss_first / 2**20:.1f} MiB, "
        f"last quarter max {rss_last / 2**20:.1f} MiB; threads {min(f[2] for f in figures)}-"
        f"{max(f[2] for f in figures)}; fds {min(f[3] for f in figures)}-{max(f[3] for f in figures)}; "
        f"db connections {sorted({f[4] for f in figures})}",
    )
    assert load.errors == [], load.errors[:5]
    assert rss_last <= rss_first * 1.10, (rss_first, rss_last)
    # Threads and file descriptors: the last quarter never exceeds the first by more than the 5 scrapers' sockets.
    assert max(f[2] for f in last) <= max(f[2] for f in first) + 5
    assert max(f[3] for f in last) <= max(f[3] for f in first) + 5
    assert {f[4] for f in figures} == {1}  # one database connection, all along
    assert all(v == 1 for (name, _), v in samples.items() if name == "partkey_check_success")
