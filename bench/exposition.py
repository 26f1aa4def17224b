"""The exposition at fleet size, in one process: encoders side by side, a result's update, a scrape, sizes, memory.

One real target's results (100 partitions, every check and the insert probe) cloned under N names
(bench/fleet_snapshot.py). Side by side, in alternating rounds so that the machine's load hits both alike:
prometheus_client's encoder (generate_latest, what the exporter used) against exporter.textformat for one target's
fragment; then, with the N-target body built: what a published result costs its thread (encode + re-make the
changed segments and gzip members), what a scrape costs when the body is up to date and when it must catch up,
the body sizes (plain, gzip members, one gzip of the whole), and the memory the exposition holds (tracemalloc).
Run: .venv/bin/python -m bench.exposition [--targets 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import gzip
import time
import tracemalloc
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

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


def _cell(summary: Summary) -> str:
    return f"{summary.median:.2f} ({summary.low:.2f}-{summary.high:.2f})"


def bumped(snapshot: Snapshot, target: str, step: int) -> Snapshot:
    """SNAPSHOT after a new distribution result of TARGET (its duration moved), its generation bumped."""
    results = dict(snapshot.results)
    for key, result in snapshot.results.items():
        if key[0] == target and key[2] == "distribution":
            results[key] = replace(result, duration_seconds=result.duration_seconds + step * 1e-4)
    generations = dict(snapshot.generations)
    generations[target] = generations.get(target, 0) + 1
    return replace(snapshot, results=MappingProxyType(results), generations=MappingProxyType(generations))


def fleet(snapshot: Snapshot, targets: list[str], rounds: int) -> list[str]:
    """A result's update, a scrape up to date and one catching up, sizes and memory, for the classic format."""
    source = Source(snapshot)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    exposition = Exposition(source, targets)
    started = time.perf_counter()
    plain, _ = exposition.render("")
    first_plain = time.perf_counter() - started
    started = time.perf_counter()
    packed, _ = exposition.render("", compress=True)
    first_gzip = time.perf_counter() - started
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
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
    return [
        f"| targets | {len(targets)} |",
        "|---|---|",
        f"| plain body | {len(plain):,} bytes |",
        f"| gzip body (members) | {len(packed):,} bytes ({len(packed) / len(whole):.2f}x one gzip of the whole: "
        f"{len(whole):,}) |",
        f"| first plain /metrics (every fragment encoded) | {first_plain * 1000:.0f} ms |",
        f"| first gzip /metrics (every member compressed) | {first_gzip * 1000:.0f} ms |",
        f"| a result's update in its thread (encode + changed segments + members), ms | {_cell(summarize(publish))} |",
        f"| gzip scrape, body up to date, ms | {_cell(summarize(ready))} |",
        f"| gzip scrape arriving before the publisher is done (catches up), ms | {_cell(summarize(catch_up))} |",
        f"| memory the exposition holds (tracemalloc, plain + gzip) | {held / 2**20:.1f} MiB |",
    ]


def main() -> None:
    """Print both tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with fleet_snapshot(args.targets) as snapshot:
        targets = names(args.targets)
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        with open("/proc/loadavg") as load:
            loadavg = " ".join(load.read().split()[:3])
        print(f"Exposition benchmark, {when}, {machine()}, load average {loadavg}; medians (min-max)\n")
        print("\n".join(encoders(snapshot, targets, args.rounds)) + "\n")
        print("\n".join(fleet(snapshot, targets, args.rounds)))


if __name__ == "__main__":
    main()
