"""Where a fleet exporter's memory goes: the 200-target scenario of bench/fleet.py in this process.

Builds the fleet, runs the exporter with its HTTP server here, waits until every check of every target succeeded,
scrapes /metrics (plain and gzip) and /probe for a while as bench/fleet.py does, then prints RSS (anonymous
against files) and the Python objects reachable from each part of the exporter (deep sizes: an object shared by
two parts counts in the first). RSS minus those is the interpreter, the libraries, C allocations (libpq) and the
allocator's free lists. (tracemalloc on the whole run was tried: at 200 targets it made the checks overrun their
intervals and the process 800 MB.)
Run: .venv/bin/python -m bench.fleet_memory [--targets 200] [--window 20]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import urllib.request

from bench.fleet import PARTITIONS, build_fleet, config_text, fleet_settings, memory_note
from bench.server import bench_server, machine
from exporter.app import Exporter
from exporter.config import parse_config
from exporter.http import serve_in_thread
from exporter.malloc import trim_heap

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
    with bench_server(settings=fleet_settings(args.targets)) as server:
        names = build_fleet(server.dsn, args.targets)
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
            rss = memory_note(os.getpid())
            # What glibc holds free but resident (freed C blocks, e.g. libpq's result buffers, in any arena).
            trimmed = memory_note(os.getpid()) if trim_heap() else "malloc_trim unavailable"
            parts = deep_sizes(
                {
                    "snapshot store (results and their payloads)": exporter.store.current,
                    "targets (connections)": exporter.targets,
                    "exposition (fragments, segments, gzip pieces, probe bodies)": exporter.exposition,
                    "check runners (checks, plans, verification caches)": exporter.runners,
                    "scheduler (jobs)": exporter.scheduler,
                    "everything else the exporter holds": exporter,
                }
            )
        finally:
            http_server.shutdown()
            exporter.stop()
    print(
        f"Fleet memory, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {machine()}, {args.targets} targets x "
        f"{PARTITIONS} partitions, covered after {covered:.0f} s, then {args.window:.0f} s of scrapes\n"
    )
    print(f"- {rss}\n- after malloc_trim(0): {trimmed}\n")
    print("| Python objects reachable from | MiB |\n|---|---|")
    for name, size in parts.items():
        print(f"| {name} | {size / 2**20:.1f} |")


def deep_sizes(roots: dict[str, object]) -> dict[str, int]:
    """Bytes of the objects reachable from each root, in order (what an earlier root reached is not counted again)."""
    seen: set[int] = set()
    sizes: dict[str, int] = {}
    for name, root in roots.items():
        total, stack = 0, [root]
        while stack:
            item = stack.pop()
            if id(item) in seen or isinstance(item, type | type(sys)):  # classes and modules are the program
                continue
            seen.add(id(item))
            total += sys.getsizeof(item)
            stack.extend(gc.get_referents(item))
        sizes[name] = total
    return sizes


if __name__ == "__main__":
    main()
