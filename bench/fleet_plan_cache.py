"""What full verification's plan cache keeps for one fleet table (100 partitions), by deep size and object count.

Builds the table bench/fleet.py clones into every database, runs full verification twice through one PlanCache
(a miss, then a hit) and prints the cache entry's parts: bytes of the objects reachable from each (deep size,
as bench/fleet_memory.py counts them) and how many objects that is. Times 50 cached runs' planning step too.
Run: .venv/bin/python -m bench.fleet_plan_cache
"""

from __future__ import annotations

import time

import psycopg

from bench.fleet import PARTITIONS, build_fleet
from bench.fleet_memory import deep_sizes
from bench.server import bench_server, machine
from bench.stats import summarize
from exporter.keyspec import KeySpec
from exporter.verify import Verifier
from exporter.verify_cache import PlanCache, kept_objects

PK = ("id", "collection_id", "partition_key")


def main() -> None:
    """Build one fleet database, fill the cache, report its size."""
    with bench_server() as server:
        (name,) = build_fleet(server.dsn, 1)
        with psycopg.connect(psycopg.conninfo.make_conninfo(server.dsn, dbname=name), autocommit=True) as conn:
            cache = PlanCache()
            spec = KeySpec(modulus=PARTITIONS)
            first = Verifier(conn, spec, primary_key=PK, plan_cache=cache).run("full")
            second = Verifier(conn, spec, primary_key=PK, plan_cache=cache).run("full")
            assert (cache.misses, cache.hits) == (1, 1), (cache.misses, cache.hits)
            assert first.mismatched == second.mismatched
            (entry,) = cache.entries.values()
            unpacking = []
            for _ in range(200):
                started = time.perf_counter()
                entry.catalog  # noqa: B018 (unpacks)
                unpacking.append(time.perf_counter() - started)
            expanding = []
            for _ in range(200):
                started = time.perf_counter()
                entry.statements  # noqa: B018 (decompresses)
                expanding.append(time.perf_counter() - started)
            timings = []
            for _ in range(50):
                started = time.perf_counter()
                Verifier(conn, spec, primary_key=PK, plan_cache=cache).full_passes()
                timings.append(time.perf_counter() - started)
    kept: dict[str, object] = {
        "catalog (as kept)": entry.packed,
        "statements (as kept)": entry._statements,
        "known values (as kept: good and bad source values per partition)": entry.known,
        "key": entry.key,
    }
    parts = deep_sizes(kept)
    print(f"Plan cache of one {PARTITIONS}-partition fleet table, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"{machine()}\n\n| part | KiB | objects kept |\n|---|---|---|")
    for part, size in parts.items():
        print(f"| {part} | {size / 1024:.1f} | {kept_objects(kept[part])} |")
    print(f"| whole entry | {sum(parts.values()) / 1024:.1f} | {kept_objects(entry)} |")
    leaves = entry.known.unpack() if entry.known is not None else {}
    leaves_kib = deep_sizes({"": leaves})[""] / 1024
    print(f"| (the known values a run unpacks, dropped after the run) | {leaves_kib:.1f} | {kept_objects(leaves)} |")
    unpacked = entry.catalog
    unpacked_kib = deep_sizes({"": unpacked})[""] / 1024
    print(f"| (the catalog a run unpacks, dropped after planning) | {unpacked_kib:.1f} | {kept_objects(unpacked)} |")
    u = summarize(unpacking)
    print(f"\nunpacking the catalog, {u.runs} runs: median {u.median:.3f} ms (min {u.low:.3f}, max {u.high:.3f})")
    e = summarize(expanding)
    print(f"decompressing the statements, {e.runs} runs: median {e.median:.3f} ms (min {e.low:.3f}, max {e.high:.3f})")
    s = summarize(timings)
    print(
        f"cached planning (fingerprint query, plans, statements), {s.runs} runs: "
        f"median {s.median:.2f} ms (min {s.low:.2f}, max {s.high:.2f})"
    )


if __name__ == "__main__":
    main()
