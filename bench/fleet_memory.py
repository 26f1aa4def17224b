"""Where a fleet exporter's memory goes: the 200-target scenario of bench/fleet.py in this process, under tracemalloc.

Builds the fleet, runs the exporter with its HTTP server here (tracemalloc on, one frame per allocation), waits
until every check of every target succeeded, scrapes /metrics (plain and gzip) and /probe for a while as
bench/fleet.py does, then prints RSS (anonymous against files), what tracemalloc sees (Python objects, bytes
included), the rest (C allocations: libpq, the allocator's free lists), and the largest allocation sites by module.
Run: .venv/bin/python -m bench.fleet_memory [--targets 200] [--window 20]
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc
import urllib.request
from pathlib import Path

from bench.fleet import PARTITIONS, build_fleet, config_text, memory_note
from bench.server import BENCH_SETTINGS, bench_server, machine
from exporter.app import Exporter
from exporter.config import parse_config
from exporter.http import serve_in_thread

CHECKS_PER_TARGET = 5


def _get(url: str, gzipped: bool) -> None:
    """One scrape, body read and dropped."""
    headers = {"Accept-Encoding": "gzip"} if gzipped else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=120) as response:  # noqa: S310
        response.read()


def main() -> None:
    """Run, wait for coverage, scrape, report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--window", type=float, default=20.0, help="seconds of scraping after full coverage")
    args = parser.parse_args()
    settings = {**BENCH_SETTINGS, "max_connections": str(max(100, args.targets + 50)), "shared_buffers": "512MB"}
    with bench_server(settings=settings) as server:
        names = build_fleet(server.dsn, args.targets)
        tracemalloc.start(1)
        exporter = Exporter(parse_config(config_text(server.dsn, names, 0), "<bench>"))
        http_server, _ = serve_in_thread(exporter, exporter.config.listen)
        exporter.start()
        try:
            started = time.monotonic()
            wanted = args.targets * CHECKS_PER_TARGET
            while sum(r.success for r in exporter.store.current.results.values()) < wanted:
                if time.monotonic() - started > 900:
                    raise RuntimeError("the fleet was not covered within 900 s")
                time.sleep(1)
            covered = time.monotonic() - started
            watch = time.monotonic()
            index = 0
            while time.monotonic() - watch < args.window:
                _get(http_server.url + "/metrics", False)
                _get(http_server.url + "/metrics", True)
                for _ in range(5):
                    _get(http_server.url + f"/probe?target={names[index % len(names)]}", False)
                    index += 1
                time.sleep(0.5)
            snapshot = tracemalloc.take_snapshot()
            traced = tracemalloc.get_traced_memory()[0]
            rss = memory_note(os.getpid())
        finally:
            http_server.shutdown()
            exporter.stop()
    by_file: dict[str, int] = {}
    for stat in snapshot.statistics("filename"):
        name = stat.traceback[0].filename
        short = name.split("site-packages/")[-1] if "site-packages/" in name else Path(name).name
        by_file[short] = by_file.get(short, 0) + stat.size
    print(
        f"Fleet memory, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {machine()}, {args.targets} targets x "
        f"{PARTITIONS} partitions, covered after {covered:.0f} s, then {args.window:.0f} s of scrapes\n"
    )
    print(f"- {rss}")
    print(f"- tracemalloc: {traced / 2**20:.1f} MiB of Python allocations live\n")
    print("| allocated in | MiB |\n|---|---|")
    for name, size in sorted(by_file.items(), key=lambda item: -item[1])[:15]:
        print(f"| {name} | {size / 2**20:.1f} |")
    print("\n| allocation site | MiB |\n|---|---|")
    for stat in snapshot.statistics("lineno")[:15]:
        frame = stat.traceback[0]
        print(f"| {Path(frame.filename).name}:{frame.lineno} | {stat.size / 2**20:.1f} |")


if __name__ == "__main__":
    main()
