"""The exposition at fleet size, in one process: encoders side by side, a result's update, a scrape, sizes, memory.

One real target's results (100 partitions, every check and the insert probe) cloned under N names
(bench/fleet_snapshot.py). Side by side, in alternating rounds so that the machine's load hits both alike:
prometheus_client's encoder (generate_latest, what the exporter used) against exporter.textformat for one target's
fragment; then, with the N-target body built: what a published result costs its thread (encode + re-make the
changed segments and gzip pieces), what a scrape costs when the body is up to date and when it must catch up,
the body sizes (plain, gzip of deflated pieces, one gzip of the whole), the memory the exposition holds
(tracemalloc);
and the plain body sent over HTTP as batched pieces against one joined buffer, next to busy threads.
Run: .venv/bin/python -m bench.exposition [--targets 200] [--rounds 5] [--scrapes 40] [--collect-only]
"""

from __future__ import annotations

import argparse
import gzip
import http.server
import itertools
import json
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from prometheus_client.core import Metric

from bench.fleet_snapshot import fleet_snapshot, names
from bench.server import machine
from bench.stats import Summary, summarize
from exporter.collector import PartkeyCollector
from exporter.exposition import Exposition, choose
from exporter.snapshot import FrozenSnapshot, Snapshot
from exporter.textformat import encode, format_of, split_families

ACCEPTS = {"classic text": "", "OpenMetrics": "application/openmetrics-text; version=1.0.0"}


@dataclass
class Source:
    """A SnapshotSource whose snapshot the bench swaps, as the store does."""

    current: Snapshot


class _Registry:
    """What prometheus_client's encoder reads: an object with collect()."""

    def __init__(self, collector: PartkeyCollector) -> None:
        self._collector = collector

    def collect(self) -> Any:
        """The collector's families."""
        return self._collector.collect()


def encoders(snapshot: Snapshot, targets: list[str], rounds: int) -> list[str]:
    """Per-target fragment encoding, prometheus_client against textformat, alternating per round."""
    lines = ["| format | prometheus_client ms per target | textformat ms per target | ratio |", "|---|---|---|---|"]
    for label, accept in ACCEPTS.items():
        encoder, _ = choose(accept)
        form = format_of(encoder)
        found: dict[str, list[float]] = {"prometheus_client": [], "textformat": []}
        for _ in range(rounds):
            for kind in found:
                started = time.perf_counter()
                for name in targets[:20]:
                    collector = PartkeyCollector(FrozenSnapshot(snapshot.for_target(name)), [name], build_info=False)
                    if kind == "textformat":
                        encode(collector.collect(), form)
                    else:
                        split_families(encoder(_Registry(collector)))
                found[kind].append((time.perf_counter() - started) / 20)
        old, new = summarize(found["prometheus_client"]), summarize(found["textformat"])
        lines.append(f"| {label} | {_cell(old)} | {_cell(new)} | {new.median / old.median:.2f}x |")
    return lines


def whole_collect(snapshot: Snapshot, targets: list[str], rounds: int) -> list[str]:
    """collect() over the whole N-target snapshot (the registry's path), encoded: every section's inputs built and
    dropped (what it did until the inputs were made lazy) against the families alone, alternating per round."""
    collector = PartkeyCollector(Source(snapshot), targets)
    form = format_of(choose("")[0])

    def with_inputs() -> Iterator[Metric]:
        for section in collector.sections(snapshot):
            assert section.inputs is not None or section.name in ("meta", "checks", "discovery")
            yield from section.families()

    ways: dict[str, Callable[[], Iterator[Metric]]] = {"inputs built": with_inputs, "collect()": collector.collect}
    found: dict[str, list[float]] = {label: [] for label in ways}
    for _ in range(rounds):
        for label, way in ways.items():
            started = time.perf_counter()
            encode(way(), form)
            found[label].append(time.perf_counter() - started)
    old, new = summarize(found["inputs built"]), summarize(found["collect()"])
    return [
        f"| {len(targets)} targets, ms per render | every section's inputs built | collect() | ratio |",
        "|---|---|---|---|",
        f"| classic text, whole snapshot | {_cell(old)} | {_cell(new)} | {new.median / old.median:.2f}x |",
    ]


def _cell(summary: Summary) -> str:
    return f"{summary.median:.2f} ({summary.low:.2f}-{summary.high:.2f})"


def _held(snapshot: Snapshot, targets: list[str]) -> int:
    """Bytes a second exposition holds once both bodies are made (tracemalloc; the bodies returned are dropped)."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    exposition = Exposition(Source(snapshot), targets)
    exposition.render_parts("")
    exposition.render_parts("", compress=True)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return held


def bumped(snapshot: Snapshot, target: str, step: int) -> Snapshot:
    """SNAPSHOT after a new distribution result of TARGET (its duration moved), its generation bumped."""
    results = dict(snapshot.results)
    for key, result in snapshot.results.items():
        if key[0] == target and key[2] == "distribution":
            results[key] = replace(result, duration_seconds=result.duration_seconds + step * 1e-4)
    generations = dict(snapshot.generations)
    generations[target] = generations.get(target, 0) + 1
    return replace(snapshot, results=MappingProxyType(results), generations=MappingProxyType(generations))


def fleet(snapshot: Snapshot, targets: list[str], rounds: int) -> tuple[Exposition, list[str]]:
    """A result's update, a scrape up to date and one catching up, sizes and memory, for the classic format."""
    source = Source(snapshot)
    exposition = Exposition(source, targets)
    started = time.perf_counter()
    plain, _ = exposition.render("")
    first_plain = time.perf_counter() - started
    started = time.perf_counter()
    packed, _ = exposition.render("", compress=True)
    first_gzip = time.perf_counter() - started
    held = _held(snapshot, targets)
    assert gzip.decompress(packed) == plain
    whole = gzip.compress(plain, compresslevel=1, mtime=0)
    publish: list[float] = []
    ready: list[float] = []
    catch_up: list[float] = []
    step = 0
    for _ in range(rounds):
        for target in targets[:: max(1, len(targets) // 20)]:
            step += 1
            source.current = bumped(source.current, target, step)
            started = time.perf_counter()
            exposition.refresh(target)  # what the publishing thread does
            publish.append(time.perf_counter() - started)
            started = time.perf_counter()
            exposition.render_parts("", compress=True)
            ready.append(time.perf_counter() - started)
            step += 1
            source.current = bumped(source.current, target, step)  # published, its thread not done yet
            started = time.perf_counter()
            exposition.render_parts("", compress=True)
            catch_up.append(time.perf_counter() - started)
    return exposition, [
        f"| targets | {len(targets)} |",
        "|---|---|",
        f"| plain body | {len(plain):,} bytes |",
        f"| gzip body (deflated pieces) | {len(packed):,} bytes ({len(packed) / len(whole):.2f}x one gzip of all: "
        f"{len(whole):,}) |",
        f"| first plain /metrics (every fragment encoded) | {first_plain * 1000:.0f} ms |",
        f"| first gzip /metrics (every piece compressed) | {first_gzip * 1000:.0f} ms |",
        f"| a result's update in its thread (encode, changed segments, gzip), ms | {_cell(summarize(publish))} |",
        f"| gzip scrape, body up to date, ms | {_cell(summarize(ready))} |",
        f"| gzip scrape arriving before the publisher is done (catches up), ms | {_cell(summarize(catch_up))} |",
        f"| memory the exposition holds (tracemalloc, plain and gzip made) | {held / 2**20:.1f} MiB |",
    ]


_CLIENT = """
import http.client, json, sys, time
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
took = {}
for _ in range(int(sys.argv[2])):
    for path in sys.argv[3:]:
        started = time.perf_counter()
        conn.request("GET", path)
        conn.getresponse().read()
        took.setdefault(path, []).append(time.perf_counter() - started)
    time.sleep(0.01)
print(json.dumps(took))
"""


def sending(exposition: Exposition, scrapes: int) -> list[str]:
    """The plain body sent as its pieces in 256 KB batches (a Python loop) against joined in one C call, side by
    side, next to two busy Python threads (as check threads encoding results are)."""
    parts = exposition.render_parts("")[0]

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            if self.path == "/batched":
                size = sum(len(piece) for group in parts for piece in group)
            else:
                body = b"".join(itertools.chain.from_iterable(parts))
                size = len(body)
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if self.path != "/batched":
                self.wfile.write(body)
                return
            batch: list[bytes] = []
            held = 0
            for group in parts:
                for piece in group:
                    batch.append(piece)
                    held += len(piece)
                    if held >= 256 * 1024:
                        self.wfile.write(b"".join(batch))
                        batch, held = [], 0
            self.wfile.write(b"".join(batch))

        def log_message(self, format: str, *args: object) -> None:
            """Quiet."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stop = threading.Event()
    for _ in range(2):
        threading.Thread(target=_burn, args=(stop,), daemon=True).start()
    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.001)  # as the exporter runs
    try:
        out = subprocess.run(
            [sys.executable, "-c", _CLIENT, str(server.server_address[1]), str(scrapes), "/batched", "/joined"],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        sys.setswitchinterval(switch)
        stop.set()
        server.shutdown()
    took = json.loads(out.stdout)
    batched, joined = summarize(took["/batched"]), summarize(took["/joined"])
    return [
        "| plain /metrics sent as | p50 ms | p99 ms |",
        "|---|---|---|",
        f"| pieces in 256 KB batches (Python loop) | {batched.median:.1f} | {batched.p99:.1f} |",
        f"| one buffer joined in C | {joined.median:.1f} | {joined.p99:.1f} |",
        f"| ratio | {joined.median / batched.median:.2f}x | {joined.p99 / batched.p99:.2f}x |",
    ]


def _burn(stop: threading.Event) -> None:
    """Pure-Python work, as encoding a fragment is."""
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def main() -> None:
    """Print both tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scrapes", type=int, default=40, help="plain scrapes per way of sending")
    parser.add_argument("--collect-only", action="store_true", help="only the whole snapshot's collect() table")
    args = parser.parse_args()
    with fleet_snapshot(args.targets) as snapshot:
        targets = names(args.targets)
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        with open("/proc/loadavg") as load:
            loadavg = " ".join(load.read().split()[:3])
        print(f"Exposition benchmark, {when}, {machine()}, load average {loadavg}; medians (min-max)\n")
        print("\n".join(whole_collect(snapshot, targets, args.rounds)) + "\n")
        if args.collect_only:
            return
        print("\n".join(encoders(snapshot, targets, args.rounds)) + "\n")
        exposition, lines = fleet(snapshot, targets, args.rounds)
        print("\n".join(lines) + "\n")
        print("\n".join(sending(exposition, args.scrapes)))


if __name__ == "__main__":
    main()
