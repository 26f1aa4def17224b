"""A fleet on one machine (make bench-fleet): one PostgreSQL, N databases with a 100-partition keyed table each.

Scenarios, side by side in one run: 10 targets and 200 targets on one exporter process, then 200 targets over
4 shards (4 processes, PARTKEY_SHARD=i/4), then 200 targets with `tables: auto` (discovery finds each table by
its trigger; the time until every target's table was discovered is measured too). Per scenario: time until every
check of every target has succeeded, /metrics size (plain and gzip) and latency (p50/p99, scraped once a second
while the checks run on their default schedule), /probe latency, RSS, CPU seconds per hour and database time per
hour (pg_stat_statements) over the observation window, the connections the exporter holds, and the machine's
1-minute load average (lowest-highest, sampled every second of the window). Ratios against 10 targets show the
growth.
Run: .venv/bin/python -m bench.fleet [--targets 200] [--window 60] [--quick] [--scenarios 10,all,shards,auto]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import gzip
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from bench.ports import listens_on, on_free_port, wait_listening
from bench.server import BENCH_SETTINGS, bench_server, machine
from bench.stats import Summary, summarize
from exporter import chunks_schema

RESULTS = Path(__file__).parent / "results"
ROLE = "bench_fleet"
PARTITIONS = 100
ROWS = 2000
TICKS = os.sysconf("SC_CLK_TCK")
CHECKS_PER_TARGET = 5  # implementation, sample, full, distribution, distribution_exact (the defaults)
# tables: auto adds incremental verification: discovery picks the identity column of the table's primary key.
CHECKS_PER_AUTO_TARGET = CHECKS_PER_TARGET + 1
COVER_LIMIT = 600

_LOAD = """
INSERT INTO chunks (collection_id, partition_key, content)
SELECT c.id, abs(hashtext(c.id::text) % {n}), 'x'
FROM (SELECT md5('collection-' || (g % 300))::uuid AS id FROM generate_series(1, {rows}) g) c
"""


@dataclass
class Measured:
    """One scenario's figures."""

    name: str
    targets: int
    processes: int
    covered_seconds: float | None = None
    discovered_seconds: float | None = None  # tables: auto: every target's table found
    body_bytes: int = 0
    gzip_bytes: int = 0
    metrics: Summary | None = None
    metrics_gzip: Summary | None = None
    probe: Summary | None = None
    rss_mb: float = 0.0
    cpu_per_hour: float = 0.0
    db_per_hour: float = 0.0
    connections: int = 0
    load: tuple[float, float] = (0.0, 0.0)  # the 1-minute load average, lowest and highest, during the observation
    notes: list[str] = field(default_factory=list)


def fleet_settings(count: int) -> dict[str, str]:
    """The bench server's settings for a fleet of COUNT targets: a connection each, and room for the bench's own."""
    return {**BENCH_SETTINGS, "max_connections": str(max(100, count + 50)), "shared_buffers": "512MB"}


def build_fleet(admin_dsn: str, count: int) -> list[str]:
    """`count` databases cloned from one template with the keyed table; their names."""
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f"DROP ROLE IF EXISTS {ROLE}")
        admin.execute(f"CREATE ROLE {ROLE} LOGIN IN ROLE pg_monitor")
        admin.execute("CREATE DATABASE fleet_template")
        with psycopg.connect(make_conninfo(admin_dsn, dbname="fleet_template"), autocommit=True) as conn:
            conn.execute(chunks_schema.chunks_table())
            for key in range(PARTITIONS):
                conn.execute(f"CREATE TABLE chunks_p{key:03d} PARTITION OF chunks FOR VALUES IN ({key})")
            conn.execute(_LOAD.format(n=PARTITIONS, rows=ROWS))
            # The semantik-style trigger: what `tables: auto` finds the table by (LIST on an integer key).
            conn.execute(chunks_schema.legacy_trigger_function(modulus=PARTITIONS))
            conn.execute(
                "CREATE TRIGGER set_partition_key BEFORE INSERT ON chunks "
                "FOR EACH ROW EXECUTE FUNCTION compute_partition_key()"
            )
            conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {ROLE}")  # partitions too
            conn.execute("VACUUM ANALYZE chunks")
        names = [f"fleet_{index:03d}" for index in range(count)]
        for name in names:
            # FILE_COPY: a template with 200 relations copies in a fraction of WAL_LOG's time (PG 15+).
            admin.execute(f"CREATE DATABASE {name} TEMPLATE fleet_template STRATEGY FILE_COPY")
    return names


def config_text(admin_dsn: str, names: list[str], port: int, auto: bool = False) -> str:
    """Every database as a target with the default schedule, connecting as the bench role (tables: auto)."""
    lines = [f"listen: {{address: 127.0.0.1, port: {port}}}", "log_level: warning", "targets:"]
    tables = ["    tables: auto"] if auto else ["    tables:", "      - table: chunks"]
    for name in names:
        dsn = make_conninfo(admin_dsn, dbname=name, user=ROLE)
        lines += [f"  - name: {name}", f'    dsn: "{dsn}"', *tables]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def exporters(config: Path, shards: int, workdir: Path) -> Iterator[tuple[list[int], list[subprocess.Popen[bytes]]]]:
    """(ports, processes): one listening `partkey-exporter run` per shard (PARTKEY_SHARD=i/n); stopped on exit."""
    binary = str(Path(sys.executable).parent / "partkey-exporter")
    ports: list[int] = []
    processes: list[subprocess.Popen[bytes]] = []

    def start(index: int, port: int) -> subprocess.Popen[bytes]:
        text = config.read_text().replace("port: PORT", f"port: {port}")
        own = workdir / f"exporter-{index}.yaml"
        own.write_text(text)
        env = {**os.environ}
        if shards > 1:
            env["PARTKEY_SHARD"] = f"{index}/{shards}"
        log = workdir / f"exporter-{index}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [binary, "run", "--config", str(own)], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir
            )
        try:
            # Exits saying so when another process took the port first: then on_free_port picks another.
            wait_listening(process, lambda: listens_on(process.pid, port), lambda: log.read_text(), own.name, 300)
        except BaseException:
            process.kill()
            process.wait()
            raise
        processes.append(process)
        return process

    try:
        for index in range(shards):
            port, _ = on_free_port(functools.partial(start, index))
            ports.append(port)
        yield ports, processes
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(15)


def get(conn: http.client.HTTPConnection, path: str, gzipped: bool = False) -> tuple[float, bytes, int]:
    """Seconds, decoded body and bytes on the wire of one GET on a kept-alive connection (reopened if closed)."""
    headers = {"Accept-Encoding": "gzip"} if gzipped else {}
    try:
        started = time.perf_counter()
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
    except (http.client.RemoteDisconnected, ConnectionError):
        conn.close()  # the server closes a connection idle for 10 s; the next request opens a new one
        started = time.perf_counter()
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
    raw = response.read()
    took = time.perf_counter() - started
    if response.status != 200:
        raise RuntimeError(f"GET {path}: HTTP {response.status}: {raw[:200]!r}")
    body = gzip.decompress(raw) if response.getheader("Content-Encoding") == "gzip" else raw
    return took, body, len(raw)


def successes(body: bytes) -> int:
    """Checks whose last run succeeded, counted on one exposition."""
    return sum(1 for line in body.splitlines() if line.startswith(b"partkey_check_success{") and line.endswith(b" 1.0"))


def discovered(body: bytes) -> int:
    """Tables discovery watches, summed over the targets of one exposition."""
    return sum(
        int(float(line.rsplit(b" ", 1)[1]))
        for line in body.splitlines()
        if line.startswith(b"partkey_discovery_tables{")
    )


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    """Resident set size in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def memory_note(pid: int) -> str:
    """Where a process's resident memory is (smaps_rollup: anonymous heap against mapped files) and its threads."""
    fields: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, _, rest = line.partition(":")
            fields[key] = int(rest.split()[0]) if rest.split() else 0
    threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            threads = int(line.split()[1])
    return (
        f"RSS {fields.get('Rss', 0) / 1024:.0f} MB = anonymous {fields.get('Anonymous', 0) / 1024:.0f} MB + files "
        f"{(fields.get('Rss', 0) - fields.get('Anonymous', 0)) / 1024:.0f} MB; {threads} threads"
    )


def db_ms(admin: psycopg.Connection[Any]) -> float:
    """Database time the bench role's statements took since the last reset, in ms."""
    row = admin.execute(
        "SELECT coalesce(sum(total_exec_time), 0) FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid "
        "WHERE r.rolname = %s",
        (ROLE,),
    ).fetchone()
    return float(row[0]) if row else 0.0


def connections(admin: psycopg.Connection[Any]) -> int:
    """Backends the exporters hold."""
    row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (ROLE,)).fetchone()
    return int(row[0]) if row else 0


def run_scenario(
    name: str, admin_dsn: str, names: list[str], shards: int, window: float, workdir: Path, auto: bool = False
) -> Measured:
    """Start the exporter(s), wait for full coverage, then observe for `window` seconds."""
    result = Measured(name, len(names), shards)
    config = workdir / f"{name}.yaml"
    config.write_text(config_text(admin_dsn, names, 0, auto).replace("port: 0", "port: PORT"))
    with psycopg.connect(admin_dsn, autocommit=True) as admin, exporters(config, shards, workdir) as (ports, processes):
        started = time.monotonic()
        conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for port in ports]
        # Every check's first success: counting five for the six of a discovered table started the observation
        # while the last targets' first runs were still due.
        wanted = len(names) * (CHECKS_PER_AUTO_TARGET if auto else CHECKS_PER_TARGET)
        while time.monotonic() - started < COVER_LIMIT:
            for process in processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{name}: an exporter exited; see {workdir}")
            try:
                bodies = [get(conn, "/metrics", gzipped=True)[1] for conn in conns]
            except (OSError, http.client.HTTPException):
                conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for port in ports]
                time.sleep(0.2)
                continue
            counts = [successes(body) for body in bodies]
            if auto and result.discovered_seconds is None and sum(discovered(b) for b in bodies) >= len(names):
                result.discovered_seconds = time.monotonic() - started
            if sum(counts) >= wanted:
                result.covered_seconds = time.monotonic() - started
                break
            time.sleep(0.25)
        admin.execute("SELECT pg_stat_statements_reset()")
        cpu_before = sum(cpu_seconds(p.pid) for p in processes)
        watch_started = time.monotonic()
        plain: list[float] = []
        packed: list[float] = []
        probes: list[float] = []
        index = 0
        loads: list[float] = []
        while time.monotonic() - watch_started < window:
            tick = time.monotonic()
            loads.append(os.getloadavg()[0])  # the machine is shared: the tails move with its load
            for conn in conns:
                took, body, _ = get(conn, "/metrics")
                plain.append(took)
                result.body_bytes = max(result.body_bytes, len(body)) if shards == 1 else len(body)
                took, _, wire = get(conn, "/metrics", gzipped=True)
                packed.append(took)
                result.gzip_bytes = wire
            for _ in range(5):  # /probe rotates over the targets, each answered by the shard that owns it
                target = names[index % len(names)]
                index += 1
                for conn in conns:
                    with contextlib.suppress(RuntimeError):  # 404 from the shards that do not own it
                        probes.append(get(conn, f"/probe?target={target}")[0])
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
        elapsed = time.monotonic() - watch_started
        cpu = sum(cpu_seconds(p.pid) for p in processes) - cpu_before
        result.cpu_per_hour = cpu * 3600 / elapsed
        result.db_per_hour = db_ms(admin) / 1000 * 3600 / elapsed
        result.rss_mb = sum(rss_mb(p.pid) for p in processes)
        result.notes += [memory_note(p.pid) for p in processes[:1]]
        result.connections = connections(admin)
        result.load = (min(loads), max(loads))
        result.metrics, result.metrics_gzip, result.probe = summarize(plain), summarize(packed), summarize(probes)
        if shards > 1:
            result.body_bytes = sum(len(get(c, "/metrics")[1]) for c in conns)
            result.gzip_bytes = sum(get(c, "/metrics", gzipped=True)[2] for c in conns)
            result.notes.append("sizes summed over the shards; latencies per shard")
        for conn in conns:
            conn.close()
    return result


def _ms(summary: Summary | None) -> str:
    return "-" if summary is None else f"{summary.median:.1f} / {summary.p99:.1f}"


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.1f}x" if base else "-"


def report(results: list[Measured], version: str, window: float) -> str:
    """The markdown table, with ratios against the first (smallest) scenario."""
    base = results[0]
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Fleet benchmark, {when}, {machine()}, PostgreSQL {version}; {PARTITIONS} partitions x {ROWS} rows per "
        f"database; default check schedule; {window:.0f} s observation after full coverage.",
        "",
        "| scenario | every table discovered after | every check of every target succeeded after "
        "| /metrics bytes (gzip) | /metrics p50 / p99 ms "
        "(gzip) | /probe p50 / p99 ms | RSS MB | CPU s/hour | DB s/hour | connections | load average |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        covered = f"{r.covered_seconds:.1f} s" if r.covered_seconds is not None else f"not within {COVER_LIMIT} s"
        found = f"{r.discovered_seconds:.1f} s" if r.discovered_seconds is not None else "-"
        lines.append(
            f"| {r.name} | {found} | {covered} | {r.body_bytes:,} ({r.gzip_bytes:,}) "
            f"| {_ms(r.metrics)} ({_ms(r.metrics_gzip)}) "
            f"| {_ms(r.probe)} | {r.rss_mb:.0f} | {r.cpu_per_hour:.0f} | {r.db_per_hour:.1f} | {r.connections} "
            f"| {r.load[0]:.1f}-{r.load[1]:.1f} |"
        )
    lines += ["", f"Ratios against {base.name}:", ""]
    lines += ["| scenario | targets | /metrics bytes | /metrics p99 | RSS | CPU/hour | DB/hour | connections |"]
    lines += ["|---|---|---|---|---|---|---|---|"]
    for r in results[1:]:
        p99 = r.metrics.p99 if r.metrics else 0.0
        base_p99 = base.metrics.p99 if base.metrics else 0.0
        lines.append(
            f"| {r.name} | {_ratio(r.targets, base.targets)} | {_ratio(r.body_bytes, base.body_bytes)} | "
            f"{_ratio(p99, base_p99)} | {_ratio(r.rss_mb, base.rss_mb)} | {_ratio(r.cpu_per_hour, base.cpu_per_hour)} "
            f"| {_ratio(r.db_per_hour, base.db_per_hour)} | {_ratio(r.connections, base.connections)} |"
        )
    notes = sorted({f"{r.name}: {note}" for r in results for note in r.notes})
    return "\n".join(lines + [""] + [f"- {note}" for note in notes]) + "\n"


def main() -> None:
    """Build the fleet once, run every scenario, print and save the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--window", type=float, default=60.0, help="observation seconds per scenario")
    parser.add_argument("--quick", action="store_true", help="20 targets, 15 s windows: does it run at all")
    parser.add_argument(
        "--scenarios", default="10,all,shards,auto", help="which to run, in order (default: 10,all,shards,auto)"
    )
    args = parser.parse_args()
    chosen = args.scenarios.split(",")
    count, window = (20, 15.0) if args.quick else (args.targets, args.window)
    workdir = Path(tempfile.mkdtemp(prefix="partkey-fleet-"))
    try:
        with bench_server(settings=fleet_settings(count)) as server:
            built = time.monotonic()
            names = build_fleet(server.dsn, count)
            print(f"built {count} databases in {time.monotonic() - built:.0f} s", flush=True)
            results = []
            scenarios = {
                "10": ("10 targets", names[:10], 1, False),
                "all": (f"{count} targets", names, 1, False),
                "shards": (f"{count} targets, 4 shards", names, 4, False),
                "auto": (f"{count} targets, tables: auto", names, 1, True),
            }
            for name, subset, shards, auto in (scenarios[key] for key in chosen):
                print(f"running: {name}", flush=True)
                file_name = name.replace(" ", "-").replace(",", "").replace(":", "")
                results.append(run_scenario(file_name, server.dsn, subset, shards, window, workdir, auto))
                results[-1].name = name
                print(report(results, server.version, window), flush=True)  # so far: a later failure loses nothing
            text = report(results, server.version, window)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fleet.md").write_text(text)


if __name__ == "__main__":
    main()
