"""partkey-exporter against query-exporter and postgres_exporter on the same database (make bench-peers).

Each peer is configured to answer the same three questions: rows per partition, wrong-key count, how the key
is kept. All three run at once against one embedded PostgreSQL; scrape latency is measured interleaved,
database time comes from pg_stat_statements (one role per exporter), then one ACCESS EXCLUSIVE lock and one
server restart are observed on all three at the same moment.

Needs: bench/.peers-venv with query-exporter and psycopg2-binary, and Debian's prometheus-postgres-exporter
(the target prints the commands when either is missing). Run: .venv/bin/python -m bench.peers [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from bench.ports import listens_on, on_free_port, wait_listening
from bench.processes import stop_process
from bench.server import bench_server, machine
from bench.stats import summarize
from exporter.app import Exporter
from exporter.config import parse_config
from exporter.demo import build_demo_database

RESULTS = Path(__file__).parent / "results"
HERE = Path(__file__).parent
QE_BIN = HERE / ".peers-venv" / "bin" / "query-exporter"
PGE_BIN = shutil.which("prometheus-postgres-exporter") or "/usr/bin/prometheus-postgres-exporter"
SCRAPE_TIMEOUT = 10.0  # Prometheus' default scrape_timeout
PROM_INTERVAL = 60  # Prometheus' default scrape_interval, seconds: what "on scrape" costs per hour
PGE_CACHED = "postgres_exporter (cached)"
ROLES = {
    "partkey-exporter": "bench_partkey",
    "query-exporter": "bench_qe",
    "postgres_exporter": "bench_pge",
    PGE_CACHED: "bench_pgec",
}

# The three questions, as a user of either peer would write them. Markers tell the statements apart in
# pg_stat_statements. The wrong-key count can only be a full scan: a peer keeps no watermark between runs.
SQL_ROWS = (
    "SELECT /* bench:rows */ relname AS partition, n_live_tup AS {col} FROM pg_stat_user_tables "
    "WHERE relid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'chunks'::regclass)"
)
SQL_WRONG = (
    "SELECT /* bench:wrong */ count(*) AS {col} FROM chunks "
    "WHERE partition_key IS DISTINCT FROM abs(hashtext(collection_id::text) % 100)"
)
SQL_IMPL = (
    "SELECT /* bench:impl */ CASE "
    "WHEN EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'chunks'::regclass AND NOT tgisinternal "
    "AND tgenabled <> 'D') THEN 'trigger' "
    "WHEN EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'chunks'::regclass AND contype = 'c') "
    "THEN 'check' "
    "WHEN EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'chunks'::regclass "
    "AND attname = 'partition_key' AND attgenerated <> '') THEN 'generated' "
    "ELSE 'none' END AS implementation, 1 AS {col}"
)
# Runs per hour with the freshness partkey-exporter gives by default: rows and wrong keys every minute,
# implementation every 5 minutes.
QE_INTERVALS = {"rows": 60, "wrong": 60, "impl": 300}
# partkey-exporter's default intervals (seconds), from README "Configuration".
PARTKEY_DEFAULTS = {
    "implementation": 300,
    "verification_incremental": 60,
    "verification_sample": 300,
    "verification_full": 6 * 3600,
    "distribution": 60,
    "distribution_exact": 3600,
}


def _qe_config(dsn: str, interval: int) -> str:
    """query-exporter YAML: the three queries, each on its own interval (not on scrape)."""

    def query(name: str, sql: str, metric: str) -> str:
        return (
            f"  {name}:\n    databases: [db]\n    metrics: [{metric}]\n    interval: {interval}\n"
            f'    sql: "{sql.format(col=metric)}"\n'
        )

    return (
        f'databases:\n  db:\n    dsn: "{dsn}"\n'
        "metrics:\n"
        "  qe_partition_rows:\n    type: gauge\n    labels: [partition]\n"
        "  qe_wrong_keys:\n    type: gauge\n"
        "  qe_key_implementation:\n    type: gauge\n    labels: [implementation]\n"
        "queries:\n"
        + query("rows", SQL_ROWS, "qe_partition_rows")
        + query("wrong", SQL_WRONG, "qe_wrong_keys")
        + query("impl", SQL_IMPL, "qe_key_implementation")
    )


def _pge_queries(cached: bool = False) -> str:
    """postgres_exporter --extend.query-path YAML: on every scrape, or cached (cache_seconds) as query-exporter's."""

    def cache(marker: str) -> str:
        return f"  cache_seconds: {QE_INTERVALS[marker]}\n" if cached else ""

    return (
        f'chunks_partition:\n  query: "{SQL_ROWS.format(col="rows")}"\n  master: true\n{cache("rows")}'
        "  metrics:\n"
        "    - partition: {usage: LABEL, description: partition}\n"
        "    - rows: {usage: GAUGE, description: live rows from statistics}\n"
        f'chunks_wrong_keys:\n  query: "{SQL_WRONG.format(col="count")}"\n  master: true\n{cache("wrong")}'
        "  metrics:\n"
        "    - count: {usage: GAUGE, description: rows whose key differs from the expression}\n"
        f'chunks_key:\n  query: "{SQL_IMPL.format(col="value")}"\n  master: true\n{cache("impl")}'
        "  metrics:\n"
        "    - implementation: {usage: LABEL, description: how the key is kept}\n"
        "    - value: {usage: GAUGE, description: always 1}\n"
    )


def _partkey_config(dsn: str, port: int, fast: bool) -> str:
    """partkey-exporter YAML; fast=True shortens intervals to 15 s for the live phase (as the peers' queries)."""
    checks = ""
    if fast:
        checks = (
            "\n        checks:\n          implementation: {interval: 15s}\n"
            "          verification_incremental: {interval: 15s}\n          distribution: {interval: 15s}\n"
            "          verification_full: {statement_timeout: 10m}\n"
            "          distribution_exact: {statement_timeout: 10m}"
        )
    return (
        f'listen: {{address: 127.0.0.1, port: {port}}}\ntargets:\n  - name: bench\n    dsn: "{dsn}"\n'
        f"    tables:\n      - table: chunks\n        monotonic_column: id{checks}\n"
    )


# Which metric answers "wrong keys", and which tells how fresh it is, per exporter.
WRONG_METRIC = {
    "partkey-exporter": "partkey_mismatched_rows{",
    "query-exporter": "qe_wrong_keys{",
    "postgres_exporter": "chunks_wrong_keys_count{",
    PGE_CACHED: "chunks_wrong_keys_count{",
}
FRESHNESS_METRIC = {
    "partkey-exporter": 'partkey_check_last_success_timestamp_seconds{check="verification_incr',
    "query-exporter": 'query_timestamp{database="db",query="wrong"',
}

ROWS_FRESHNESS = {
    "partkey-exporter": 'partkey_check_last_success_timestamp_seconds{check="distribution",',
    "query-exporter": 'query_timestamp{database="db",query="rows"',
}


@dataclass
class Peer:
    """One exporter process under test."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    cpu_start: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def cpu_seconds(self) -> float:
        """User+system CPU of the process so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        """Resident set size in MB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")


def scrape(port: int, timeout: float = SCRAPE_TIMEOUT) -> tuple[str, float, str]:
    """One GET /metrics: ('ok'|'timeout'|'error <what>', seconds, body)."""
    started = time.perf_counter()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read().decode(errors="replace")
        connection.close()
        status = "ok" if response.status == 200 else f"error HTTP {response.status}"
        return status, time.perf_counter() - started, body
    except TimeoutError:
        return "timeout", time.perf_counter() - started, ""
    except OSError as error:
        return f"error {type(error).__name__}", time.perf_counter() - started, ""


def value(body: str, prefix: str) -> float | None:
    """The first sample whose line starts with prefix (a name plus the start of its labels), or None."""
    for line in body.splitlines():
        if line.startswith(prefix) or line.startswith(prefix.rstrip("{") + " "):
            with contextlib.suppress(ValueError):
                return float(line.rsplit(" ", 1)[1])
    return None


def _roles(conn: psycopg.Connection[Any]) -> None:
    """One least-privileged role per exporter, so pg_stat_statements and pg_stat_activity tell them apart."""
    for role in ROLES.values():
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(f"CREATE ROLE {role} LOGIN IN ROLE pg_monitor")
        conn.execute(f"GRANT SELECT ON chunks TO {role}")


def _db_ms_by_marker(conn: psycopg.Connection[Any], role: str) -> dict[str, tuple[float, int]]:
    """pg_stat_statements for one role: marker -> (mean ms per call, calls); 'all' sums every statement."""
    rows = conn.execute(
        "SELECT query, calls, total_exec_time FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid "
        "WHERE r.rolname = %s",
        (role,),
    ).fetchall()
    out: dict[str, tuple[float, int]] = {}
    total, calls = 0.0, 0
    for query, n, ms in rows:
        total, calls = total + ms, calls + n
        for marker in ("rows", "wrong", "impl"):
            if f"bench:{marker}" in query:
                old_ms, old_n = out.get(marker, (0.0, 0))
                out[marker] = (old_ms + ms, old_n + n)
    result = {k: (ms / n if n else 0.0, n) for k, (ms, n) in out.items()}
    result["all"] = (total, calls)
    return result


def partkey_db_time(dsn: str, admin: psycopg.Connection[Any]) -> dict[str, float]:
    """DB ms per run of each partkey check (pg_stat_statements, its own role), with 1,000 new rows per run."""
    exporter = Exporter(parse_config(_partkey_config(dsn, 0, fast=False), "<bench>"))
    exporter.run_all_once()  # warm-up: connection, catalog caches, first watermark
    per_run: dict[str, float] = {}
    for (_, _, check), runner in sorted(exporter.runners.items()):
        if check == "insert_probe":
            continue
        runs = 2 if check in ("verification_full", "distribution_exact") else 5
        spent = 0.0
        for _ in range(runs):
            if check == "verification_incremental":
                admin.execute(
                    "INSERT INTO chunks (collection_id, partition_key, content) "
                    "SELECT md5(g::text)::uuid, abs(hashtext(md5(g::text)::uuid::text) % 100), 'x' "
                    "FROM generate_series(1, 1000) g"
                )
            admin.execute("SELECT pg_stat_statements_reset()")
            runner.run()
            spent += _db_ms_by_marker(admin, ROLES["partkey-exporter"])["all"][0]
        per_run[check] = spent / runs
    exporter.stop()
    return per_run


@contextlib.contextmanager
def running(
    name: str,
    command: Callable[[int], list[str]],
    env: dict[str, str],
    workdir: Path,
    prepare: Callable[[int], object] = lambda port: None,
) -> Iterator[Peer]:
    """Start one exporter process on a free port, listening; stop it (TERM, then KILL) on exit.

    prepare(port) writes whatever config names the port; when another process took the port before the exporter
    bound it, the exporter says so and exits, and it is started again on another port (bench/ports.py).
    """
    log = workdir / f"{name}.log"

    def start(port: int) -> Peer:
        prepare(port)
        with log.open("wb") as out:
            process = subprocess.Popen(
                command(port),
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                cwd=workdir,
                start_new_session=True,
            )
        try:
            wait_listening(
                process, lambda: listens_on(process.pid, port), lambda: log.read_text(errors="replace"), name, 300
            )
        except BaseException:
            stop_process(process)
            raise
        return Peer(name, port, process, log)

    _, peer = on_free_port(start)
    try:
        yield peer
    finally:
        stop_process(peer.process)


def _wait_ready(peer: Peer, deadline: float) -> None:
    """Until /metrics answers with the wrong-key metric (the first runs have finished)."""
    while time.monotonic() < deadline:
        if peer.process.poll() is not None:
            raise RuntimeError(f"{peer.name} exited: {peer.log.read_text()[-2000:]}")
        status, _, body = scrape(peer.port, 30)
        if status == "ok" and value(body, WRONG_METRIC[peer.name]) is not None:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{peer.name} not ready: {peer.log.read_text()[-2000:]}")


def _backends(admin: psycopg.Connection[Any]) -> dict[str, tuple[int, int]]:
    """Per exporter: (backends connected, backends waiting on a lock)."""
    rows = admin.execute(
        "SELECT usename, count(*), count(*) FILTER (WHERE wait_event_type = 'Lock') "
        "FROM pg_stat_activity WHERE usename LIKE 'bench_%' GROUP BY usename"
    ).fetchall()
    by_role = {r[0]: (int(r[1]), int(r[2])) for r in rows}
    return {name: by_role.get(role, (0, 0)) for name, role in ROLES.items()}


def _observe(peers: list[Peer], seconds: float, admin_dsn: str) -> dict[str, Any]:
    """Scrape every peer once a second (scrapes may overlap, as with two Prometheus replicas) for `seconds`."""
    results: dict[str, list[tuple[float, str, float, str]]] = {p.name: [] for p in peers}
    peaks: dict[str, list[int]] = {p.name: [0, 0] for p in peers}
    lock = threading.Lock()

    def one(peer: Peer, sent: float) -> None:
        status, took, body = scrape(peer.port)
        with lock:
            results[peer.name].append((sent, status, took, body))

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=10 * len(peers)) as pool:
        while time.monotonic() - started < seconds:
            tick = time.monotonic()
            for peer in peers:
                pool.submit(one, peer, tick - started)
            try:  # a fresh connection each time: during a restart there is no server to ask
                for name, (held, waiting) in _backends_fresh(admin_dsn).items():
                    if name in peaks:
                        peaks[name] = [max(peaks[name][0], held), max(peaks[name][1], waiting)]
            except psycopg.Error:
                pass
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    return {"scrapes": results, "peaks": peaks}


def _describe(scrapes: list[tuple[float, str, float, str]], name: str, since_wall: float) -> tuple[str, str]:
    """(ok/timeout/error counts with median latency, what the 200s carried)."""
    counts: dict[str, int] = {}
    for _, status, _, _ in scrapes:
        counts[status.split()[0]] = counts.get(status.split()[0], 0) + 1
    ok = [took for _, status, took, _ in scrapes if status == "ok"]
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    if ok:
        summary += f"; ok p50 {statistics.median(ok) * 1000:.0f} ms"
    bodies = [body for _, status, _, body in scrapes if status == "ok"]
    if not bodies:
        return summary, "nothing"
    last = bodies[-1]
    wrong = value(last, WRONG_METRIC[name])
    fresh = value(last, FRESHNESS_METRIC[name]) if name in FRESHNESS_METRIC else None
    if wrong is None:
        return summary, "no wrong-key value"
    served = f"wrong keys = {wrong:.0f}"
    if fresh is not None:
        age = since_wall - fresh
        served += f", computed {age:.0f} s before the event" if age > 0 else f", computed {-age:.0f} s after it began"
    rows_fresh = value(last, ROWS_FRESHNESS[name]) if name in ROWS_FRESHNESS else None
    if rows_fresh is not None:
        age = since_wall - rows_fresh
        served += (
            f"; rows per partition computed {age:.0f} s before the event"
            if age > 0
            else f"; rows per partition computed {-age:.0f} s after it began"
        )
    if name == "partkey-exporter":
        success = value(last, 'partkey_check_success{check="verification_incremental"')
        served += f", check_success={success:.0f}" if success is not None else ""
    return summary, served


def _time_to_fresh(peer: Peer, after_wall: float, limit: float) -> str:
    """Seconds until the peer serves a wrong-key value computed after after_wall (unix time), or 'not within'."""
    if peer.name == PGE_CACHED:
        # No timestamp metric tells a cached value from a fresh one.
        return f"unknown (no timestamp; up to {QE_INTERVALS['wrong']} s cached)"
    started = time.monotonic()
    while time.monotonic() - started < limit:
        status, _, body = scrape(peer.port)
        if status == "ok" and value(body, WRONG_METRIC[peer.name]) is not None:
            fresh = value(body, FRESHNESS_METRIC[peer.name]) if peer.name in FRESHNESS_METRIC else time.time()
            if fresh is not None and fresh >= after_wall:
                return f"{time.time() - after_wall:.0f} s"
        time.sleep(0.5)
    return f"not within {limit:.0f} s"


def _fresh_in(
    scrapes: list[tuple[float, str, float, str]], name: str, event_wall: float, watch_start: float
) -> str | None:
    """Seconds from event_wall until a recorded scrape carried a wrong-key value computed after it, else None."""
    if name == PGE_CACHED:
        return None
    for sent, status, took, body in sorted(scrapes):
        if status != "ok" or value(body, WRONG_METRIC[name]) is None:
            continue
        answered = watch_start + sent + took
        fresh = value(body, FRESHNESS_METRIC[name]) if name in FRESHNESS_METRIC else watch_start + sent
        if fresh is not None and fresh >= event_wall:
            # The first scrape that carried it (scrapes are a second apart), and when the value itself was computed.
            computed = f" (computed at +{fresh - event_wall:.1f} s)" if name in FRESHNESS_METRIC else ""
            return f"{answered - event_wall:.1f} s{computed}"
    return None


def run(rows: int, rounds: int, lock_seconds: int, settle: int) -> list[str]:
    """Everything; returns the Markdown lines."""
    workdir = Path(tempfile.mkdtemp(prefix="partkey-peers-"))
    out: list[str] = []
    with bench_server() as server, psycopg.connect(server.dsn, autocommit=True) as admin:
        build_demo_database(server.dsn, rows)
        admin.execute("VACUUM ANALYZE chunks")
        _roles(admin)
        host = str(conninfo_to_dict(server.dsn)["host"])
        dsn = {name: f"postgresql://{role}@/postgres?host={host}" for name, role in ROLES.items()}
        print("partkey-exporter DB time per check run ...", flush=True)
        per_check = partkey_db_time(dsn["partkey-exporter"], admin)
        partkey_config = workdir / "partkey.yaml"
        qe_dsn = dsn["query-exporter"].replace("postgresql:", "postgresql+psycopg2:")
        (workdir / "qe.yaml").write_text(_qe_config(qe_dsn, 15))
        (workdir / "pge.yaml").write_text(_pge_queries())
        (workdir / "pgec.yaml").write_text(_pge_queries(cached=True))
        partkey_bin = str(Path(sys.executable).parent / "partkey-exporter")
        pge_dsn = f"host={host} user={ROLES['postgres_exporter']} dbname=postgres sslmode=disable"
        pgec_dsn = f"host={host} user={ROLES[PGE_CACHED]} dbname=postgres sslmode=disable"
        admin.execute("SELECT pg_stat_statements_reset()")

        def pge(queries: str) -> Callable[[int], list[str]]:
            return lambda port: [
                PGE_BIN,
                f"--web.listen-address=127.0.0.1:{port}",
                f"--extend.query-path={queries}",
                "--disable-default-metrics",
                "--disable-settings-metrics",
                "--log.level=warn",
            ]

        with contextlib.ExitStack() as stack:
            peers = [
                stack.enter_context(
                    running(
                        "partkey-exporter",
                        lambda port: [partkey_bin, "run", "--config", "partkey.yaml"],
                        {},
                        workdir,
                        lambda port: partkey_config.write_text(_partkey_config(dsn["partkey-exporter"], port, True)),
                    )
                ),
                stack.enter_context(
                    running(
                        "query-exporter",
                        lambda port: [
                            str(QE_BIN),
                            "--config",
                            "qe.yaml",
                            "-H",
                            "127.0.0.1",
                            "-p",
                            str(port),
                            "-L",
                            "warning",
                        ],
                        {},
                        workdir,
                    )
                ),
                stack.enter_context(
                    running("postgres_exporter", pge("pge.yaml"), {"DATA_SOURCE_NAME": pge_dsn}, workdir)
                ),
                stack.enter_context(running(PGE_CACHED, pge("pgec.yaml"), {"DATA_SOURCE_NAME": pgec_dsn}, workdir)),
            ]
            deadline = time.monotonic() + 120
            for peer in peers:
                _wait_ready(peer, deadline)
            for peer in peers:
                peer.cpu_start, peer.started = peer.cpu_seconds(), time.monotonic()
            print(f"all {len(peers)} up; {rounds} interleaved scrape rounds ...", flush=True)
            latency: dict[str, list[float]] = {p.name: [] for p in peers}
            kept: dict[str, list[float]] = {p.name: [] for p in peers}
            # Prometheus keeps its connection open between scrapes; measure that too, it behaves differently.
            alive = {p.name: http.client.HTTPConnection("127.0.0.1", p.port, timeout=30) for p in peers}
            for r in range(rounds):
                for peer in peers[r % len(peers) :] + peers[: r % len(peers)]:
                    status, took, _ = scrape(peer.port, 30)
                    if status == "ok":
                        latency[peer.name].append(took)
                    started = time.perf_counter()
                    alive[peer.name].request("GET", "/metrics")
                    alive[peer.name].getresponse().read()
                    kept[peer.name].append(time.perf_counter() - started)
            for connection in alive.values():
                connection.close()
            time.sleep(settle)  # let interval-driven queries run a few times at rest
            held = _backends(admin)
            usage = {
                p.name: (p.rss_mb(), (p.cpu_seconds() - p.cpu_start) / (time.monotonic() - p.started) * 3600)
                for p in peers
            }
            db = {name: _db_ms_by_marker(admin, role) for name, role in ROLES.items()}
            out += _normal_table(latency, kept, per_check, db, held, usage)
            print(f"lock: ACCESS EXCLUSIVE on chunks for {lock_seconds} s ...", flush=True)
            locker = psycopg.connect(server.dsn)
            locker.execute("LOCK TABLE chunks IN ACCESS EXCLUSIVE MODE")
            lock_wall = time.time()
            during = _observe(peers, lock_seconds, server.dsn)
            locker.rollback()
            locker.close()
            released = time.time()
            after = {p.name: _time_to_fresh(p, released, 90) for p in peers}
            piled = _backends(admin)
            out += [
                "",
                f"**Lock**: `LOCK TABLE chunks IN ACCESS EXCLUSIVE MODE` held {lock_seconds} s while "
                f"each exporter was scraped once a second (overlapping, client timeout {SCRAPE_TIMEOUT:.0f} s).",
                "",
                "| exporter | scrapes during the lock | what a 200 carried at the end | peak backends "
                "(waiting on the lock) | fresh value after release | backends right after |",
                "|---|---|---|---|---|---|",
            ]
            for peer in peers:
                summary, served = _describe(during["scrapes"][peer.name], peer.name, lock_wall)
                peak = during["peaks"][peer.name]
                out.append(
                    f"| {peer.name} | {summary} | {served} | {peak[0]} ({peak[1]}) | {after[peer.name]} | "
                    f"{piled[peer.name][0]} |"
                )
            print("restart: pg_ctl restart -m fast ...", flush=True)
            restart_started = time.time()
            restart_watch: dict[str, Any] = {}
            watcher = threading.Thread(
                target=lambda: restart_watch.update(_observe(peers, 20, server.dsn)), daemon=True
            )
            watcher.start()
            server.restart()
            restarted = time.time()
            watcher.join(60)
            watch_start = restart_started  # _observe's offsets count from (about) here
            after = {
                p.name: _fresh_in(restart_watch.get("scrapes", {}).get(p.name, []), p.name, restarted, watch_start)
                or _time_to_fresh(p, restarted, 120)
                for p in peers
            }
            time.sleep(2)
            reconnected = _backends_fresh(server.dsn)
            took = restarted - restart_started
            out += [
                "",
                f"**Restart**: `pg_ctl restart -m fast` took {took:.1f} s; each exporter "
                "scraped once a second for 20 s from the moment it began.",
                "",
                "| exporter | process survived | scrapes in those 20 s | fresh value after the restart "
                "| backends after |",
                "|---|---|---|---|---|",
            ]
            for peer in peers:
                scrapes = restart_watch.get("scrapes", {}).get(peer.name, [])
                summary, _ = _describe(scrapes, peer.name, restart_started)
                survived = "yes" if peer.process.poll() is None else f"no (exit {peer.process.returncode})"
                out.append(
                    f"| {peer.name} | {survived} | {summary} | {after[peer.name]} | {reconnected[peer.name][0]} |"
                )
    shutil.rmtree(workdir, ignore_errors=True)
    return out


def _backends_fresh(dsn: str) -> dict[str, tuple[int, int]]:
    """_backends on a new connection (the admin one died with the restart)."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as conn:
        return _backends(conn)


def _normal_table(
    latency: dict[str, list[float]],
    kept: dict[str, list[float]],
    per_check: dict[str, float],
    db: dict[str, dict[str, tuple[float, int]]],
    held: dict[str, tuple[int, int]],
    usage: dict[str, tuple[float, float]],
) -> list[str]:
    """The main comparison: scrape latency, DB time per run and per hour, backends, RSS, CPU."""
    hour: dict[str, float] = {
        "partkey-exporter": sum(ms * 3600 / PARTKEY_DEFAULTS[c] for c, ms in per_check.items()),
        "query-exporter": sum(db["query-exporter"].get(k, (0.0, 0))[0] * 3600 / s for k, s in QE_INTERVALS.items()),
        "postgres_exporter": sum(db["postgres_exporter"].get(k, (0.0, 0))[0] for k in QE_INTERVALS)
        * 3600
        / PROM_INTERVAL,
        PGE_CACHED: sum(db[PGE_CACHED].get(k, (0.0, 0))[0] * 3600 / s for k, s in QE_INTERVALS.items()),
    }
    per_run = {
        "partkey-exporter": "; ".join(
            f"{c.replace('verification_', 'verify ')} {ms:.1f}" for c, ms in per_check.items()
        ),
        "query-exporter": "; ".join(f"{k} {db['query-exporter'].get(k, (0.0, 0))[0]:.1f}" for k in QE_INTERVALS)
        + " (per interval)",
        "postgres_exporter": f"{sum(db['postgres_exporter'].get(k, (0.0, 0))[0] for k in QE_INTERVALS):.1f} per "
        "scrape (" + "; ".join(f"{k} {db['postgres_exporter'].get(k, (0.0, 0))[0]:.1f}" for k in QE_INTERVALS) + ")",
        PGE_CACHED: "; ".join(f"{k} {db[PGE_CACHED].get(k, (0.0, 0))[0]:.1f}" for k in QE_INTERVALS)
        + " (once per cache_seconds)",
    }
    how = {
        "partkey-exporter": "defaults: estimate + incremental verify 1 min, sample and implementation 5 min, "
        "exact 1 h, full 6 h; scrape serves a cached snapshot",
        "query-exporter": "3 queries on intervals: rows and wrong keys 1 min (full scan), implementation 5 min",
        "postgres_exporter": f"3 queries on every scrape (Prometheus default {PROM_INTERVAL} s)",
        PGE_CACHED: "the same 3 queries with cache_seconds: rows and wrong keys 60, implementation 300; "
        "a scrape after expiry runs them",
    }
    base_latency = summarize(latency["partkey-exporter"]).median
    base_kept = summarize(kept["partkey-exporter"]).median
    lines = [
        "| exporter | schedule | scrape p50 / p99 (max), ms, new connection each | x partkey p50 "
        "| scrape p50 / p99 ms, one kept-alive connection (as Prometheus) | x partkey p50 "
        "| DB ms per run (pg_stat_statements) | DB s per hour | x partkey | backends | RSS MB "
        "| CPU s per hour (live phase) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ROLES:
        s = summarize(latency[name]) if latency[name] else None
        cell = f"{s.median:.2f} / {s.p99:.2f} ({s.high:.2f}), n={s.runs}" if s else "no successful scrape"
        ratio = f"{s.median / base_latency:.0f}x" if s and name != "partkey-exporter" else "1"
        k = summarize(kept[name])
        kept_cell = f"{k.median:.2f} / {k.p99:.2f}"
        kept_ratio = f"{k.median / base_kept:.2f}x" if name != "partkey-exporter" else "1"
        db_ratio = f"{hour[name] / hour['partkey-exporter']:.1f}x" if name != "partkey-exporter" else "1"
        lines.append(
            f"| {name} | {how[name]} | {cell} | {ratio} | {kept_cell} | {kept_ratio} | {per_run[name]} | "
            f"{hour[name] / 1000:.1f} | "
            f"{db_ratio} | {held[name][0]} | {usage[name][0]:.0f} | {usage[name][1]:.0f} |"
        )
    return lines


def main() -> None:
    """Check the peers are installed, run, print and save bench/results/peers.md."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="200,000 rows, 10 s lock, fewer scrapes")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--lock-seconds", type=int, default=30)
    args = parser.parse_args()
    missing = []
    if not QE_BIN.exists():
        missing.append(
            f"python3 -m venv {HERE}/.peers-venv && {HERE}/.peers-venv/bin/pip install query-exporter psycopg2-binary"
        )
    if not Path(PGE_BIN).exists():
        missing.append("apt-get install prometheus-postgres-exporter")
    if missing:
        sys.exit("bench-peers needs the peers installed:\n  " + "\n  ".join(missing))
    rows, rounds, lock_seconds = (200_000, 20, 10) if args.quick else (args.rows, args.rounds, args.lock_seconds)
    started = time.monotonic()
    lines = run(rows, rounds, lock_seconds, settle=35 if args.quick else 65)
    versions = subprocess.run([str(QE_BIN), "--version"], capture_output=True, text=True, check=False).stdout.strip()
    pge = subprocess.run([PGE_BIN, "--version"], capture_output=True, text=True, check=False)
    pge_version = (pge.stdout + pge.stderr).splitlines()[0] if (pge.stdout + pge.stderr) else "?"
    header = (
        f"<!-- bench-peers: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {machine()}, shared with other "
        f"developers' test runs; embedded PostgreSQL 18, demo chunks table {rows:,} rows x 100 LIST partitions; "
        f"{versions}; {pge_version}; {time.monotonic() - started:.0f} s -->"
    )
    text = "\n".join([header, *lines]) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    # A --quick run is a smoke test: it never replaces the full results the README quotes.
    (RESULTS / ("peers-quick.md" if args.quick else "peers.md")).write_text(text)


if __name__ == "__main__":
    main()
