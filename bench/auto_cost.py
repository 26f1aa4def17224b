"""What a `tables: auto` target's checks cost the exporter, with and without the caches that cut it, side by side.

Part 1, one fleet database (bench/fleet.py's template: 100 partitions, the semantik trigger, an identity key) watched
with `tables: auto`: each check run again and again in this process, in alternating rounds with the table's key-spec
cache kept (as the exporter runs) and emptied before each run (every run reads the catalog and parses the formula,
as before the cache): wall ms, exporter CPU ms (this process's CPU time) and statements per run.
Part 2, the exposition at fleet size (one real target cloned under N names, bench/fleet_snapshot.py): what a
published result costs its thread when the target's encoded sections are reused, against every section written
again, for an incremental verification result and a distribution result whose values did not change (a new payload
object with equal values, as a run makes), alternating.
Run: .venv/bin/python -m bench.auto_cost [--rounds 30] [--targets 200]
"""

from __future__ import annotations

import argparse
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import psycopg

from bench.fleet import build_fleet, config_text
from bench.fleet_snapshot import fleet_snapshot, names
from bench.server import bench_server, machine
from bench.stats import Summary, summarize
from exporter.app import Exporter
from exporter.config import parse_config
from exporter.exposition import Exposition, Fragment
from exporter.snapshot import Snapshot, SnapshotStore
from exporter.spec_cache import SpecCache
from exporter.textformat import Format

Timed = tuple[list[float], list[float], list[int]]  # wall seconds, CPU seconds, statements per run


class _NoReuse(Exposition):
    """The exposition as before section reuse: every publish writes the target's whole fragment again."""

    def _encode(
        self, name: str | None, snapshot: Snapshot, form: Format, generation: int, base: Fragment | None = None
    ) -> Fragment:
        return super()._encode(name, snapshot, form, generation, None)


def _statements(conn: psycopg.Connection[Any]) -> int:
    """Statements the server has run for the bench role's database so far (pg_stat_database.xact_commit is too
    coarse): calls summed over pg_stat_statements."""
    row = conn.execute("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements").fetchone()
    return int(row[0]) if row else 0


def _cell(summary: Summary) -> str:
    return f"{summary.median:.2f} ({summary.low:.2f}-{summary.high:.2f})"


def checks(rounds: int) -> list[str]:
    """Part 1: per check, wall and CPU per run with the spec cache kept and emptied, alternating."""
    lines = [
        "| check (one `tables: auto` target) | wall ms, cache kept | wall ms, cache emptied | CPU ms, kept "
        "| CPU ms, emptied | CPU ratio | statements per run, kept / emptied |",
        "|---|---|---|---|---|---|---|",
    ]
    with bench_server() as server:
        name = build_fleet(server.dsn, 1)[0]
        text = config_text(server.dsn, [name], 0, auto=True)
        exporter = Exporter(parse_config(text, "<bench>"))
        with psycopg.connect(server.dsn, autocommit=True) as admin:
            admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            try:
                exporter.discover_now()
                exporter.run_all_once()
                for key, runner in sorted(exporter.runners.items()):
                    state = exporter.verify_states[key[:2]]
                    ways: dict[bool, Timed] = {True: ([], [], []), False: ([], [], [])}
                    count = rounds if key[2] not in {"verification_full", "distribution_exact"} else max(3, rounds // 6)
                    for _ in range(count):
                        for kept in (True, False):
                            if not kept:
                                state.spec_cache = SpecCache()  # every run reads the catalog, as before the cache
                            before = _statements(admin)
                            wall, cpu = time.perf_counter(), time.process_time()
                            runner.run()
                            ways[kept][0].append(time.perf_counter() - wall)
                            ways[kept][1].append(time.process_time() - cpu)
                            ways[kept][2].append(_statements(admin) - before - 1)  # less the count's own
                    (kw, kc, ks), (ew, ec, es) = ways[True], ways[False]
                    cpu_kept, cpu_emptied = summarize(kc), summarize(ec)
                    lines.append(
                        f"| {key[2]} | {_cell(summarize(kw))} | {_cell(summarize(ew))} | {_cell(cpu_kept)} "
                        f"| {_cell(cpu_emptied)} | {cpu_kept.median / cpu_emptied.median:.2f}x "
                        f"| {sorted(ks)[len(ks) // 2]} / {sorted(es)[len(es) // 2]} |"
                    )
            finally:
                exporter.stop()
    return lines


def _publisher(exposition: Exposition, store: SnapshotStore, kind: str) -> Callable[[str, int], float]:
    """A function publishing a new result of KIND for a target (equal values, a new payload object); seconds."""

    def publish(target: str, step: int) -> float:
        for key, result in store.current.results_of(target).items():
            if key[2] != kind:
                continue
            payload = pickle.loads(pickle.dumps(result.payload))  # noqa: S301 - our own objects
            moved = replace(
                result,
                duration_seconds=result.duration_seconds + step * 1e-4,
                finished_at=result.finished_at + step,
                last_success_at=result.finished_at + step,
                payload=payload,
            )
            started = time.perf_counter()
            store.publish(moved)  # the listener (exposition.refresh) runs in this thread, as in the daemon
            return time.perf_counter() - started
        raise LookupError(f"{target} has no {kind} result")

    return publish


def publishes(targets: int, rounds: int) -> list[str]:
    """Part 2: a publish's time in its thread, sections reused against written again, alternating."""
    lines = [
        f"| result published (at {targets} targets) | sections reused, ms | every section written, ms | ratio |",
        "|---|---|---|---|",
    ]
    with fleet_snapshot(targets) as snapshot:
        fleet = names(targets)
        sides: dict[bool, tuple[SnapshotStore, Exposition]] = {}
        for reuse in (True, False):
            store = SnapshotStore()
            store._snapshot = snapshot  # a bench seeds the store with the cloned fleet
            exposition = (Exposition if reuse else _NoReuse)(store, fleet)
            store.subscribe(exposition.refresh)
            exposition.render_parts("")
            exposition.render_parts("", compress=True)
            exposition.render_parts("", target=fleet[0])
            sides[reuse] = (store, exposition)
        for kind in ("verification_incremental", "distribution"):
            took: dict[bool, list[float]] = {True: [], False: []}
            for step in range(rounds * 4):
                target = fleet[(step * 7) % targets]
                for reuse in (True, False):
                    store, exposition = sides[reuse]
                    took[reuse].append(_publisher(exposition, store, kind)(target, step))
            reused, written = summarize(took[True]), summarize(took[False])
            lines.append(f"| {kind} | {_cell(reused)} | {_cell(written)} | {reused.median / written.median:.2f}x |")
    return lines


def main() -> None:
    """Print both tables with the machine's load."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--targets", type=int, default=200)
    args = parser.parse_args()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = " ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"tables: auto cost, {when}, {machine()}, load average {load}; medians (min-max)\n", flush=True)
    print("\n".join(checks(args.rounds)) + "\n", flush=True)
    print("\n".join(publishes(args.targets, args.rounds)))
    print(f"\nload average at the end: {' '.join(f'{value:.1f}' for value in os.getloadavg())}")


if __name__ == "__main__":
    main()
