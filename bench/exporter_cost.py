"""What the exporter costs its database and host, and how each cost grows (make bench-exporter).

Scenarios: 1M rows x 100 partitions and 1M rows x 1,000 partitions by default, 10M x 100 with --big,
10M x 1,000 with --huge.
Per scenario: each check against its physical limit measured alternately in the same run (a bare count(*) seq
scan for verification and exact counts, a bare catalog read for statistics and implementation), the database
time each check consumes per run and per hour at the default schedule (pg_stat_statements), /metrics latency
under 10 concurrent scrapers, RSS and CPU of the exporter process (`partkey-exporter run`, a subprocess).
Run: .venv/bin/python -m bench.exporter_cost [--quick] [--big] [--huge]   (set PARTKEY_BENCH_DSN to use your own server)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from bench.peers import PARTKEY_DEFAULTS, ROLES, _db_ms_by_marker, _roles, _wait_ready, running
from bench.server import BenchServer, bench_server, build_chunks, machine
from bench.stats import summarize
from exporter.app import Exporter
from exporter.config import parse_config

RESULTS = Path(__file__).parent / "results"
ROLE = ROLES["partkey-exporter"]
SCRAPERS = 10

BARE_CATALOG = (
    "SELECT c.relname, c.reltuples, s.n_live_tup FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
    "LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE i.inhparent = 'chunks'::regclass"
)
BARE_IMPLEMENTATION = (
    "SELECT (SELECT count(*) FROM pg_trigger WHERE tgrelid = 'chunks'::regclass), "
    "(SELECT count(*) FROM pg_constraint WHERE conrelid = 'chunks'::regclass), "
    "(SELECT count(*) FROM pg_inherits WHERE inhparent = 'chunks'::regclass), "
    "(SELECT partstrat FROM pg_partitioned_table WHERE partrelid = 'chunks'::regclass)"
)


def build(dsn: str, rows: int, partitions: int) -> None:
    """The semantik-like table with `partitions` LIST partitions (10 collections each) and 7 stale keys."""
    build_chunks(dsn, rows, partitions, partitions * 10)


def _config(dsn: str, port: int, partitions: int) -> str:
    """One target, one table, every check at its default schedule (the probe is off by default)."""
    return (
        f'listen: {{address: 127.0.0.1, port: {port}}}\ntargets:\n  - name: bench\n    dsn: "{dsn}"\n'
        f"    tables:\n      - table: chunks\n        modulus: {partitions}\n        monotonic_column: id\n"
        "        checks:\n          verification_full: {statement_timeout: 30m}\n"
        "          distribution_exact: {statement_timeout: 30m}\n"
    )


def _timed(function: Callable[[], Any]) -> float:
    """Seconds one call takes."""
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def checks_against_limits(
    dsn: str, admin: psycopg.Connection[Any], partitions: int, repeat: int
) -> dict[str, dict[str, Any]]:
    """Each check alternately with its bare physical limit; DB ms per run from pg_stat_statements."""
    exporter = Exporter(parse_config(_config(dsn, 0, partitions), "<bench>"))
    exporter.run_all_once()  # warm-up: connection, caches, the first watermark
    runners = {check: runner for (_, _, check), runner in exporter.runners.items()}
    watermark: list[int] = [0]

    def new_rows() -> None:
        watermark[0] = int(admin.execute("SELECT max(id) FROM chunks").fetchone()[0])  # type: ignore[index]
        admin.execute(
            f"INSERT INTO chunks (collection_id, partition_key, content) "
            f"SELECT md5(g::text)::uuid, abs(hashtext(md5(g::text)::uuid::text) % {partitions}), 'x' "
            f"FROM generate_series(1, 1000) g"
        )

    limits: dict[str, tuple[str, Callable[[], Any]]] = {
        "verification_full": (
            "bare count(*) seq scan",
            lambda: admin.execute("SELECT count(*) FROM chunks").fetchone(),
        ),
        "distribution_exact": (
            "bare count(*) seq scan",
            lambda: admin.execute("SELECT count(*) FROM chunks").fetchone(),
        ),
        "verification_sample": (
            "bare count(*) TABLESAMPLE SYSTEM (1)",
            lambda: admin.execute("SELECT count(*) FROM chunks TABLESAMPLE SYSTEM (1)").fetchone(),
        ),
        "verification_incremental": (
            "bare count(*) of the 1,000 new rows",
            lambda: admin.execute("SELECT count(*) FROM chunks WHERE id > %s", (watermark[0],)).fetchone(),
        ),
        "distribution": (
            "bare catalog read (pg_class + pg_stat_user_tables)",
            lambda: admin.execute(BARE_CATALOG).fetchall(),
        ),
        "implementation": (
            "bare catalog read (pg_trigger, pg_constraint, pg_inherits)",
            lambda: admin.execute(BARE_IMPLEMENTATION).fetchall(),
        ),
    }
    out: dict[str, dict[str, Any]] = {}
    for check, (label, bare) in limits.items():
        runs = repeat if check in ("verification_full", "distribution_exact") else repeat * 3
        own: list[float] = []
        limit: list[float] = []
        db_ms: list[float] = []
        for _ in range(runs):  # alternate: the check, then its limit, in the same conditions
            if check == "verification_incremental":
                new_rows()
            admin.execute("SELECT pg_stat_statements_reset()")
            own.append(_timed(runners[check].run))
            db_ms.append(_db_ms_by_marker(admin, ROLE)["all"][0])
            limit.append(_timed(bare))
        ratios = [a / b for a, b in zip(own, limit, strict=True)]
        out[check] = {
            "own": summarize(own),
            "limit": summarize(limit),
            "label": label,
            "ratio": (statistics.median(ratios), min(ratios), max(ratios)),
            "db_ms": statistics.median(db_ms),
        }
    exporter.stop()
    return out


def _scrape_loop(port: int, count: int, timings: list[float], lock: threading.Lock) -> None:
    """One scraper: `count` sequential scrapes over one keep-alive connection, as Prometheus does."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    mine = []
    for _ in range(count):
        started = time.perf_counter()
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        response.read()
        mine.append(time.perf_counter() - started)
    connection.close()
    with lock:
        timings.extend(mine)


def process_costs(dsn: str, partitions: int, scrapes: int, idle: int) -> dict[str, Any]:
    """`partkey-exporter run` as its own process: /metrics under 10 scrapers, RSS, CPU idle and per 1,000 scrapes."""
    workdir = Path(tempfile.mkdtemp(prefix="partkey-cost-"))
    binary = str(Path(sys.executable).parent / "partkey-exporter")
    command = [binary, "run", "--config", "config.yaml"]
    try:
        write = lambda port: (workdir / "config.yaml").write_text(_config(dsn, port, partitions))  # noqa: E731
        with running("partkey-exporter", lambda port: command, {}, workdir, write) as peer:
            port = peer.port
            _wait_ready(peer, time.monotonic() + 1800)
            time.sleep(5)  # the staggered first runs (full verification, exact counts) finish
            cpu, started = peer.cpu_seconds(), time.monotonic()
            time.sleep(idle)
            idle_cpu_per_hour = (peer.cpu_seconds() - cpu) / (time.monotonic() - started) * 3600
            timings: list[float] = []
            lock = threading.Lock()
            cpu = peer.cpu_seconds()
            threads = [
                threading.Thread(target=_scrape_loop, args=(port, scrapes // SCRAPERS, timings, lock))
                for _ in range(SCRAPERS)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(600)
            scrape_cpu = (peer.cpu_seconds() - cpu) / len(timings) * 1000
            body_size = len(_one_scrape(port))
            return {
                "scrape": summarize(timings),
                "rss": peer.rss_mb(),
                "idle_cpu_h": idle_cpu_per_hour,
                "cpu_per_1000": scrape_cpu,
                "bytes": body_size,
            }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _one_scrape(port: int) -> bytes:
    """One /metrics body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/metrics")
    body = connection.getresponse().read()
    connection.close()
    return body


def scenario(server: BenchServer, rows: int, partitions: int, repeat: int, scrapes: int, idle: int) -> dict[str, Any]:
    """Build, then measure one (rows, partitions) scenario."""
    started = time.monotonic()
    build(server.dsn, rows, partitions)
    print(f"  {rows:,} x {partitions}: data ready in {time.monotonic() - started:.0f} s", flush=True)
    with psycopg.connect(server.dsn, autocommit=True) as admin:
        _roles(admin)
        admin.execute(f"GRANT INSERT ON chunks TO {ROLE}")
        host = str(conninfo_to_dict(server.dsn)["host"])
        dsn = f"postgresql://{ROLE}@/postgres?host={host}"
        checks = checks_against_limits(dsn, admin, partitions, repeat)
        size = admin.execute(
            "SELECT pg_size_pretty(sum(pg_total_relation_size(inhrelid))) "
            "FROM pg_inherits WHERE inhparent = 'chunks'::regclass"
        ).fetchone()
    print(f"  checks measured ({time.monotonic() - started:.0f} s); exporter process ...", flush=True)
    process = process_costs(dsn, partitions, scrapes, idle)
    per_hour = sum(c["db_ms"] * 3600 / PARTKEY_DEFAULTS[name] for name, c in checks.items()) / 1000
    return {
        "checks": checks,
        "process": process,
        "db_s_per_hour": per_hour,
        "size": size[0] if size else "?",
        "seconds": time.monotonic() - started,
    }


def _metrics(result: dict[str, Any]) -> dict[str, tuple[str, float]]:
    """Flat rows: name -> (cell text, number used for the growth factor)."""
    rows: dict[str, tuple[str, float]] = {}
    s = result["process"]["scrape"]
    rows[f"/metrics, {SCRAPERS} concurrent scrapers: p50 / p99 ms"] = (
        f"{s.median:.2f} / {s.p99:.2f} (max {s.high:.1f}), n={s.runs}",
        s.p99,
    )
    for name, c in result["checks"].items():
        own, limit = c["own"], c["limit"]
        ratio, low, high = c["ratio"]
        rows[f"{name}: ms, and x its limit ({c['label']})"] = (
            f"{own.median:.1f} ({own.low:.1f}-{own.high:.1f}) vs {limit.median:.1f}: "
            f"**{ratio:.2f}x** ({low:.2f}-{high:.2f})",
            own.median,
        )
    for name, c in result["checks"].items():
        every = PARTKEY_DEFAULTS[name]
        rows[f"DB time per run, {name} (every {every // 60} min)"] = (f"{c['db_ms']:.1f} ms", c["db_ms"])
    rows["DB time per hour at the default schedule"] = (f"**{result['db_s_per_hour']:.2f} s**", result["db_s_per_hour"])
    p = result["process"]
    rows["exporter RSS"] = (f"{p['rss']:.0f} MB", p["rss"])
    rows["exporter CPU at rest (default schedule)"] = (f"{p['idle_cpu_h']:.1f} s per hour", p["idle_cpu_h"])
    rows["exporter CPU per 1,000 scrapes"] = (f"{p['cpu_per_1000']:.2f} s", p["cpu_per_1000"])
    rows["/metrics body"] = (f"{p['bytes'] / 1024:.0f} KiB", p["bytes"])
    rows["connections held"] = ("1", 1)
    return rows


def render(results: dict[tuple[int, int], dict[str, Any]], header: str) -> str:
    """One table: a column per scenario, then growth factors 1M->10M rows and 100->1,000 partitions."""
    keys = list(results)
    flat = {k: _metrics(v) for k, v in results.items()}
    growth: list[tuple[str, tuple[int, int], tuple[int, int]]] = []
    small = next((k for k in keys if k[1] == 100), None)
    if small:
        big = next((k for k in keys if k[1] == 100 and k[0] > small[0]), None)
        wide = next((k for k in keys if k[1] > 100 and k[0] == small[0]), None)
        if big:
            growth.append((f"x growth {small[0] // 1_000_000 or small[0]:,}M->{big[0] // 1_000_000}M rows", small, big))
        if wide:
            growth.append((f"x growth 100->{wide[1]:,} partitions", small, wide))
        both = next((k for k in keys if big and wide and k == (big[0], wide[1])), None)
        if both:
            growth.append(
                (
                    f"x growth both ({small[0] // 1_000_000 or small[0]:,}M x 100 -> "
                    f"{both[0] // 1_000_000}M x {both[1]:,})",
                    small,
                    both,
                )
            )
    names = [f"{r:,} rows x {p:,} partitions ({results[(r, p)]['size']})" for r, p in keys]
    lines = [
        header,
        "",
        "| measurement | " + " | ".join(names + [g[0] for g in growth]) + " |",
        "|---|" + "---|" * (len(names) + len(growth)),
    ]
    for metric in flat[keys[0]]:
        cells = [flat[k][metric][0] for k in keys]
        for _, a, b in growth:
            first, second = flat[a][metric][1], flat[b][metric][1]
            cells.append(f"{second / first:.2f}x" if first else "-")
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _server() -> Iterator[BenchServer]:
    """PARTKEY_BENCH_DSN (needs pg_stat_statements preloaded) or a fresh embedded server with bench settings."""
    dsn = os.environ.get("PARTKEY_BENCH_DSN")
    if dsn:
        server = BenchServer(dsn, lambda: None)
        with psycopg.connect(dsn, autocommit=True) as conn:
            server.version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        yield server
    else:
        with bench_server() as server:
            yield server


def main() -> None:
    """Parse options, run each scenario, print the table and save bench/results/exporter-cost.md."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100,000 rows instead of 1,000,000 (about 3 minutes)")
    parser.add_argument("--big", action="store_true", help="add 10,000,000 rows x 100 partitions (+10 minutes)")
    parser.add_argument("--huge", action="store_true", help="add 10,000,000 rows x 1,000 partitions (+8 minutes)")
    parser.add_argument("--rows", type=int, help="rows of the base scenarios (default 1,000,000)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--verification",
        action="store_true",
        help="only full verification by distinct values vs count(*): 1M x 5,000, 10M x 5,000, 10M x 100,000 "
        "collections, without and with an index (about 40 minutes)",
    )
    parser.add_argument(
        "--verification-rows", default="1000000,10000000", help="row counts of the --verification scenarios"
    )
    parser.add_argument("--scrapes", type=int, default=5000, help="total /metrics scrapes over the 10 scrapers")
    parser.add_argument("--idle", type=int, default=60, help="seconds at rest to measure the exporter's CPU")
    args = parser.parse_args()
    if args.verification:
        verification_main(args.verification_rows, min(args.repeat, 5))
        return
    base = args.rows or (100_000 if args.quick else 1_000_000)
    plan = [(base, 100), (base, 1000)] + ([(base * 10, 100)] if args.big else [])
    plan += [(base * 10, 1000)] if args.huge else []
    if args.quick:
        args.idle = min(args.idle, 20)
    started = time.monotonic()
    results: dict[tuple[int, int], dict[str, Any]] = {}
    with _server() as server:
        for rows, partitions in plan:
            print(f"scenario {rows:,} rows x {partitions:,} partitions ...", flush=True)
            results[(rows, partitions)] = scenario(server, rows, partitions, args.repeat, args.scrapes, args.idle)
    order = sorted(results, key=lambda k: (k[1], k[0]))
    header = (
        f"<!-- bench-exporter: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {machine()}, shared with other "
        f"developers' test runs; PostgreSQL {server.version} (bench settings, shared_buffers 1GB, "
        f"pg_stat_statements); {time.monotonic() - started:.0f} s -->"
    )
    text = render({k: results[k] for k in order}, header)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    # A --quick run is a smoke test: it never replaces the full results the README quotes.
    (RESULTS / ("exporter-cost-quick.md" if args.quick else "exporter-cost.md")).write_text(text)


def verification_main(rows_option: str, repeat: int) -> None:
    """Run bench/verify_cost.py's scenarios; print and save bench/results/verification-cost.md."""
    from bench import verify_cost  # imports this module: import it only when asked

    small, big = (int(r) for r in rows_option.split(","))
    plan = [(small, 5000), (big, 5000), (big, 100_000)]
    started = time.monotonic()
    results: dict[tuple[int, int], dict[str, dict[str, Any]]] = {}
    with _server() as server:
        for rows, collections in plan:
            print(f"verification: {rows:,} rows, {collections:,} collections ...", flush=True)
            results[(rows, collections)] = verify_cost.scenario(server.dsn, rows, collections, repeat)
    header = (
        f"<!-- bench-exporter --verification: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {machine()}, shared "
        f"with other developers' test runs; PostgreSQL {server.version} (bench settings, shared_buffers 1GB); "
        f"100 LIST partitions; {repeat} alternating rounds; {time.monotonic() - started:.0f} s -->"
    )
    text = verify_cost.render(results, header)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / ("verification-cost.md" if big >= 10_000_000 else "verification-cost-quick.md")).write_text(text)


if __name__ == "__main__":
    main()
