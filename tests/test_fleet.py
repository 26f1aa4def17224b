"""Many targets: per-target fragments of /metrics, /probe?target=, gzip, and first runs staggered per target."""

from __future__ import annotations

import gc
import gzip
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from apscheduler.events import EVENT_JOB_EXECUTED, EVENT_JOB_MISSED, JobExecutionEvent
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families
from psycopg.conninfo import make_conninfo

from exporter.app import FIRST_CHECK_SECONDS, JOB_OPTIONS, STAGGER_SECONDS, Exporter, first_run_delays, make_scheduler
from exporter.config import ConfigError, load_config, parse_config
from exporter.daemon import Service
from exporter.exposition import split_families, wants_gzip
from exporter.http import ExporterHTTPServer
from exporter.shard import owned, owner
from tests.schema import create_list_table, insert_rows
from tests.support import http, serving

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
Samples = set[tuple[str, str, tuple[tuple[str, str], ...], float]]


# For exporters that are built and never started: nothing connects, so no database is made for the test.
UNSTARTED = "postgresql://partkey@127.0.0.1:1/unstarted"


def fleet_config(
    dsn: str, targets: int, checks: str = "{distribution_exact: {interval: 1h}}", name: str = "db{:03d}"
) -> str:
    """`targets` targets on the same database (each has its own connection and its own series), named by NAME's
    format of their index, each with the CHECKS mapping (YAML flow style) on chunks."""
    entries = "".join(
        f"""
  - name: {name.format(index)}
    dsn: "{dsn}"
    tables:
      - table: chunks
        modulus: 5
        checks: {checks}
"""
        for index in range(targets)
    )
    return f"targets:{entries}"


@pytest.fixture
def fleet(conn: psycopg.Connection[Any], dsn: str) -> Iterator[ExporterHTTPServer]:
    """Three targets with every check run once, served over HTTP."""
    create_list_table(conn, modulus=5, trigger=None)
    insert_rows(conn, 200, modulus=5)
    conn.execute("UPDATE chunks SET partition_key = (partition_key + 1) % 5 WHERE id = 7")
    exporter = Exporter(parse_config(fleet_config(dsn, 3), "<test>"))
    exporter.run_all_once()
    with serving(exporter) as server:
        yield server


def samples(text: str, openmetrics: bool = False) -> Samples:
    """Every sample as (family, sample name, labels, value), from either format."""
    parse = parse_openmetrics if openmetrics else text_string_to_metric_families
    return {
        (family.name, sample.name, tuple(sorted(sample.labels.items())), sample.value)
        for family in parse(text)
        for sample in family.samples
    }


def test_assembled_body_is_the_whole_registry_encoded_at_once(fleet: ExporterHTTPServer) -> None:
    """Fragments merged per family give exactly the samples (and the family order) of one full encoding."""
    exporter = fleet.exporter
    text, content_type = exporter.render_metrics("")
    assert content_type.startswith("text/plain")
    whole = generate_latest(exporter.registry)
    assert samples(text.decode()) == samples(whole.decode())
    assert [f.name for f in split_families(text)] == [f.name for f in split_families(whole)]
    assert len(samples(text.decode())) > 100
    assert text.count(b"# HELP partkey_up ") == 1 and text.count(b"partkey_build_info{") == 1
    om, om_type = exporter.render_metrics(OPENMETRICS)
    assert om_type.startswith("application/openmetrics-text")
    assert om.endswith(b"# EOF\n") and om.count(b"# EOF") == 1
    whole_om = generate_openmetrics(exporter.registry)  # type: ignore[no-untyped-call]
    assert samples(om.decode(), True) == samples(whole_om.decode(), True)


def test_only_a_changed_target_is_encoded_again(fleet: ExporterHTTPServer) -> None:
    """A check on db001 re-encodes db001's fragment alone, when it publishes; the others are reused."""
    exporter = fleet.exporter
    exporter.render_metrics("")
    before = exporter.exposition.encoded_fragments
    again, _ = exporter.render_metrics("")
    assert exporter.exposition.encoded_fragments == before  # same snapshot: the cached body
    exporter.runners[("db001", "public.chunks", "distribution")].run()
    # Encoded ahead, in the check's own thread when it published: the scrape after it only assembles.
    assert exporter.exposition.encoded_fragments == before + 1
    fresh, _ = exporter.render_metrics("")
    assert exporter.exposition.encoded_fragments == before + 1
    assert samples(fresh.decode()) == samples(generate_latest(exporter.registry).decode())
    assert fresh != again  # db001's duration and finish time moved


def until(done: Callable[[], bool], seconds: float = 60) -> None:
    """Poll for a state another thread reaches (generous deadline: the machine is shared and loaded)."""
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "the state was not reached in time"
        time.sleep(0.05)


def test_a_result_updates_the_bodies_in_its_thread_and_a_scrape_only_sends_bytes(fleet: ExporterHTTPServer) -> None:
    """A publish encodes its target and re-makes only its changed segments; scrapes then encode and compress nothing."""
    exporter = fleet.exporter
    exposition = exporter.exposition
    gzipped = {"Accept-Encoding": "gzip"}
    _, headers, packed = http(fleet.url + "/metrics", headers=gzipped)
    plain = http(fleet.url + "/metrics")[2]
    assert gzip.decompress(packed) == plain
    content_type = headers["Content-Type"]
    kept = exposition.fragment("db000", content_type)
    assert kept is not None

    def counted() -> tuple[int, int, int]:
        """Fragments encoded, segments joined, gzip members made so far."""
        return exposition.encoded_fragments, exposition.joined_segments, exposition.compressed_pieces

    counts = counted()
    exporter.runners[("db001", "public.chunks", "distribution")].run()
    encoded, joined, compressed = counted()
    assert encoded == counts[0] + 1  # db001 alone, in the check's thread
    # Its duration and finish time moved: those families' segments, not all ~50 of them, joined and compressed.
    assert 2 <= joined - counts[1] < 40 and compressed > counts[2]
    assert exposition.fragment("db000", content_type) is kept  # unchanged targets' fragments are reused
    fresh = http(fleet.url + "/metrics")[2]
    assert samples(fresh.decode()) == samples(generate_latest(exporter.registry).decode())
    assert fresh != plain
    for _ in range(3):
        assert http(fleet.url + "/metrics")[2] == fresh
        assert gzip.decompress(http(fleet.url + "/metrics", headers=gzipped)[2]) == fresh
    assert counted() == (encoded, joined, compressed)  # the scrapes only sent bytes


def test_probe_serves_one_target_from_the_snapshot(fleet: ExporterHTTPServer, dsn: str) -> None:
    """/probe?target= has that target's series only, the same values as /metrics, and never runs a check."""
    status, headers, body = http(fleet.url + "/probe?target=db002")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    probed = samples(body.decode())
    targets = {dict(labels).get("target") for _, _, labels, _ in probed}
    assert targets == {"db002", None}  # None: partkey_build_info
    everything = samples(http(fleet.url + "/metrics")[2].decode())
    assert probed <= everything
    assert (
        "partkey_mismatched_rows",
        "partkey_mismatched_rows",
        (("mode", "full"), ("table", "public.chunks"), ("target", "db002")),
        1.0,
    ) in probed
    results = dict(fleet.exporter.store.current.results)
    pids = [target.backend_pid for target in fleet.exporter.targets.values()]
    assert None not in pids
    with psycopg.connect(dsn, autocommit=True) as watcher:

        def activity() -> list[tuple[Any, ...]]:
            """When each target's backend last started a query or changed state (a statement moves both)."""
            query = (
                "SELECT pid, query_start, state_change, state FROM pg_stat_activity WHERE pid = ANY(%s) ORDER BY pid"
            )
            return watcher.execute(query, (pids,)).fetchall()

        before = activity()
        for name in ("db000", "db001", "db002", "db000"):
            assert http(fleet.url + f"/probe?target={name}", headers={"Accept-Encoding": "gzip"})[0] == 200
            assert http(fleet.url + f"/probe?target={name}")[0] == 200
        assert http(fleet.url + "/metrics")[0] == 200
        assert activity() == before and len(before) == 3  # no statement on any target's connection
    assert dict(fleet.exporter.store.current.results) == results  # no check ran


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        ("", 400, "/probe needs exactly one target=NAME"),
        ("?target=", 400, "/probe needs exactly one target=NAME"),
        ("?target=db000&target=db001", 400, "/probe needs exactly one target=NAME"),
        ("?target=nope", 404, "unknown target 'nope'"),
    ],
)
def test_probe_bad_requests(fleet: ExporterHTTPServer, query: str, status: int, message: str) -> None:
    got, _, body = http(fleet.url + "/probe" + query)
    assert (got, json.loads(body)) == (status, {"error": message})


@pytest.mark.parametrize("path", ["/metrics", "/probe?target=db001"])
def test_gzip_when_the_client_accepts_it(fleet: ExporterHTTPServer, path: str) -> None:
    """Accept-Encoding: gzip (as Prometheus sends) gets the same body compressed; q=0 or none gets it plain."""
    status, headers, plain = http(fleet.url + path)
    assert status == 200 and "Content-Encoding" not in headers and headers["Vary"] == "Accept, Accept-Encoding"
    status, headers, packed = http(fleet.url + path, headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert int(headers["Content-Length"]) == len(packed) < len(plain) / 3
    assert gzip.decompress(packed) == plain
    status, headers, body = http(fleet.url + path, headers={"Accept-Encoding": "gzip;q=0, identity"})
    assert "Content-Encoding" not in headers and body == plain


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("gzip", True),
        ("gzip, deflate, br", True),
        ("deflate, GZIP;q=0.5", True),
        ("gzip;q=0", False),
        ("gzip; q=0.0", False),
        ("identity", False),
        ("", False),
        ("gzipped", False),
    ],
)
def test_wants_gzip(header: str, expected: bool) -> None:
    assert wants_gzip(header) is expected


def test_first_runs_are_staggered_per_target_not_across_the_fleet() -> None:
    """With 200 targets every target starts within a second, its checks apart; no one waits for the fleet."""
    exporter = Exporter(parse_config(fleet_config(UNSTARTED, 200), "<test>"))
    delays = first_run_delays(exporter.runners)
    assert len(delays) == len(exporter.runners) == 200 * 5
    per_target = len(exporter.runners) // 200
    last_first_run = FIRST_CHECK_SECONDS + 1.0 + (per_target - 1) * STAGGER_SECONDS
    assert max(delays.values()) <= last_first_run  # was 0.5 + 999 * 0.2 + 1 s = 201 s with a global index
    for target in exporter.targets:
        mine = sorted((delay, key[2]) for key, delay in delays.items() if key[0] == target)
        assert mine[0][1] == "implementation"
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(mine)]
        assert min(gaps) >= STAGGER_SECONDS - 1e-9  # never two checks of one target at the same moment


def test_replicas_cover_every_target_exactly_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """N replicas over one config: each target is checked by exactly one of them, and shares are even-ish."""
    # Parsed once: the Exporter reads PARTKEY_SHARD when it is built (parsing 200 targets 14 times took most of 8 s).
    config = parse_config(fleet_config(UNSTARTED, 200), "<test>")
    for total in (1, 2, 4, 7):
        owners: dict[str, list[int]] = {}
        for index in range(total):
            monkeypatch.setenv("PARTKEY_SHARD", f"{index}/{total}")
            exporter = Exporter(config)
            for name in exporter.targets:
                owners.setdefault(name, []).append(index)
            assert all(key[0] in exporter.targets for key in exporter.runners)
        assert owners == {f"db{i:03d}": owners[f"db{i:03d}"] for i in range(200)}
        assert all(len(shards) == 1 for shards in owners.values()), total
        sizes = [sum(1 for s in owners.values() if s == [i]) for i in range(total)]
        assert min(sizes) >= 200 / total * 0.6, sizes  # no replica left nearly idle


def test_changing_total_moves_only_what_it_must() -> None:
    """Rendezvous hashing: n -> n+1 moves only targets onto the new shard (about 1/(n+1)); n+1 -> n moves back."""
    names = [f"db{i:04d}" for i in range(2000)]
    for total in (1, 2, 3, 4, 8):
        before = {name: owner(name, total) for name in names}
        after = {name: owner(name, total + 1) for name in names}
        moved = [name for name in names if before[name] != after[name]]
        assert all(after[name] == total for name in moved)  # only onto the new shard, never between old ones
        assert abs(len(moved) - len(names) / (total + 1)) < len(names) * 0.05, (total, len(moved))


def test_shard_from_config_and_env_and_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """shard: in the file, PARTKEY_SHARD over it, and clear errors for bad values."""
    text = fleet_config(UNSTARTED, 20)
    monkeypatch.delenv("PARTKEY_SHARD", raising=False)
    config = parse_config(text + "shard: {index: 1, total: 3}\n", "<test>")
    assert config.sharding() == (1, 3)
    assert [t.name for t in config.owned_targets()] == owned([t.name for t in config.targets], 1, 3)
    monkeypatch.setenv("PARTKEY_SHARD", "2/3")
    assert config.sharding() == (2, 3)
    for bad, message in (("3/3", "INDEX must be between 0 and TOTAL-1"), ("x", "must look like INDEX/TOTAL")):
        monkeypatch.setenv("PARTKEY_SHARD", bad)
        with pytest.raises(ConfigError, match=message):
            Exporter(config)
    with pytest.raises(ConfigError, match=r"shard: Value error, index must be below total \(3\), got 3"):
        parse_config(text + "shard: {index: 3, total: 3}\n", "<test>")


def test_a_connection_cap_queues_fairly_and_no_target_starves(conn: psycopg.Connection[Any], dsn: str) -> None:
    """50 targets, max_connections 8, 16 scheduler threads: never more than 8 backends, every target keeps running."""
    create_list_table(conn, modulus=5, trigger=None)
    insert_rows(conn, 100, modulus=5)
    checks = (
        "{implementation: {interval: 2s}, distribution: {interval: 2s}, verification_sample: {enabled: false},"
        " verification_full: {enabled: false}, distribution_exact: {enabled: false}}"
    )
    fleet = fleet_config(dsn, 50, checks, name="c{:02d}")
    exporter = Exporter(parse_config(f"max_workers: 16\nmax_connections: 8\n{fleet}", "<test>"))
    assert exporter.slots is not None
    dbname = conn.info.dbname
    backends: list[int] = []

    exporter.start()
    try:
        seen: dict[str, set[float]] = {name: set() for name in exporter.targets}
        succeeded: set[tuple[str, str]] = set()

        def every_target_ran_three_times() -> bool:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = 'partkey-exporter'",
                (dbname,),
            ).fetchone()
            backends.append(int(row[0]) if row else 0)
            for (target, _, check), result in exporter.store.current.results.items():
                if result.success:
                    seen[target].add(result.finished_at)
                    succeeded.add((target, check))
            return all(len(times) >= 3 for times in seen.values())

        deadline = 120.0
        waited = 0.0
        while not every_target_ran_three_times():
            assert waited < deadline, sorted((len(t), n) for n, t in seen.items())[:5]
            time.sleep(0.1)
            waited += 0.1
    finally:
        exporter.stop()
    assert exporter.slots.max_held <= 8
    # A closed connection's backend leaves pg_stat_activity a moment after the client closed it (and gave its slot
    # on): the server may show a few more while they exit (11 once, on 4 xdist workers at a load of 10), never the 50
    # of one connection per target. slots.max_held above is the exact bound.
    assert max(backends) <= 8 + 4, sorted(backends)[-10:]
    assert max(backends) >= 2  # the cap was used, not one connection at a time
    # Both checks of every target succeeded at some point (a loaded machine may time out the latest run, which the
    # check's success metric reports; starvation would show as a check that never succeeded).
    assert succeeded == {(name, check) for name in exporter.targets for check in ("implementation", "distribution")}
    assert exporter.slots.granted > 50  # slots changed hands: connections were given back and taken in turn


def _target_file(directory: Path, name: str, dsn_file: Path) -> Path:
    """One target per file, its DSN (with a password) read from a file as the docs show."""
    path = directory / f"{name}.yaml"
    path.write_text(f"name: {name}\ndsn_file: {dsn_file}\ntables:\n  - table: chunks\n    modulus: 5\n")
    return path


def test_targets_dir_adds_changes_and_removes_targets_without_a_restart(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Files added, broken, fixed and removed: the daemon follows, keeps the last good set, never shows a password."""
    create_list_table(conn, modulus=5, trigger=None)
    secret = "s3cr3t-pw-123"
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(make_conninfo(dsn, password=secret))
    targets = tmp_path / "targets.d"
    targets.mkdir()
    _target_file(targets, "first", dsn_file)
    (targets / ".first.yaml.swp").write_text("not yaml: [")  # an editor's temporary: ignored
    config = tmp_path / "config.yaml"
    config.write_text("listen: {port: 0}\ntargets_dir: targets.d\n")
    service = Service(config)
    logging.getLogger().addHandler(caplog.handler)  # setup_logging(force=True) removed pytest's handler
    service.start()
    try:
        assert gc.get_freeze_count() > 0  # the long-lived objects are out of the collector's full passes
        assert list(service.exporter.targets) == ["first"]
        assert not service.targets_dir_changed()
        _target_file(targets, "second", dsn_file)
        assert service.targets_dir_changed() and service.reload()
        assert gc.get_freeze_count() == 0  # thawed by the reload, until its first round is done
        assert sorted(service.exporter.targets) == ["first", "second"]
        assert service.server is not None and service.server.exporter is service.exporter
        broken = targets / "third.yaml"
        broken.write_text(f"name: third\ndsn_file: {dsn_file}\ntables: []\n")
        assert service.targets_dir_changed() and not service.reload()  # refused: the running set stays
        assert sorted(service.exporter.targets) == ["first", "second"]
        refused = [r.getMessage() for r in caplog.records if "reload refused" in r.getMessage()]
        assert refused and f"{broken}:3: tables: List should have at least 1 item" in refused[0], refused
        broken.unlink()
        (targets / "first.yaml").unlink()
        assert service.targets_dir_changed() and service.reload()
        assert list(service.exporter.targets) == ["second"]
        (targets / "again.yml").write_text("name: second\ndsn: 'dbname=x'\ntables: [{table: chunks}]\n")
        assert service.targets_dir_changed() and not service.reload()
        refused = [r.getMessage() for r in caplog.records if "already used" in r.getMessage()]
        assert refused and "target name 'second' is already used in" in refused[0]
        service.exporter.run_all_once()
        assert service.exporter.store.current.target_up == {"second": True}
    finally:
        service.stop()
    assert gc.get_freeze_count() == 0
    assert secret not in caplog.text


def test_targets_dir_must_be_a_directory(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("targets_dir: nowhere\n")
    with pytest.raises(ConfigError, match=r"targets_dir: .*nowhere is not a readable directory"):
        load_config(config)
    config.write_text("log_level: info\n")
    with pytest.raises(ConfigError, match="give at least one target under targets:, or a targets_dir"):
        load_config(config)


def _quiet_target_file(directory: Path, name: str, dsn: str, interval: str = "1h") -> Path:
    """A target whose checks run once at the start and then not for an hour, so nothing moves unless restarted."""
    path = directory / f"{name}.yaml"
    path.write_text(
        f"name: {name}\ndsn: '{dsn}'\ntables:\n  - table: chunks\n    modulus: 5\n    checks:\n"
        f"      implementation: {{interval: {interval}}}\n      distribution: {{interval: 1h}}\n"
        "      verification_sample: {enabled: false}\n      verification_full: {enabled: false}\n"
        "      distribution_exact: {enabled: false}\n"
    )
    return path


def test_a_reload_keeps_unchanged_targets_running(conn: psycopg.Connection[Any], dsn: str, tmp_path: Path) -> None:
    """targets_dir gains, changes and loses a file: only that target starts or stops; the others keep everything."""
    # Kept: the connection (same backend pid and backend_start), every check's last success, the schedule.
    create_list_table(conn, modulus=5, trigger=None)
    targets = tmp_path / "targets.d"
    targets.mkdir()
    for name in ("a", "b", "c"):
        _quiet_target_file(targets, name, dsn)
    config = tmp_path / "config.yaml"
    config.write_text("listen: {port: 0}\ntargets_dir: targets.d\n")
    service = Service(config)
    service.start()

    def state(names: list[str]) -> dict[str, Any]:
        """Per target: its backend (pid, backend_start) and every check's last success."""
        exporter = service.exporter
        found: dict[str, Any] = {}
        for name in names:
            pid = exporter.targets[name].backend_pid
            row = conn.execute("SELECT backend_start FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
            results = {k: r.last_success_at for k, r in exporter.store.current.results.items() if k[0] == name}
            found[name] = (pid, row[0] if row else None, results)
        return found

    def settled(names: list[str]) -> bool:
        """Both checks of each target succeeded and its connection is open."""
        exporter = service.exporter
        current = exporter.store.current.results
        return all(
            exporter.targets[n].backend_pid is not None
            and sum(1 for k, r in current.items() if k[0] == n and r.last_success_at) == 2
            for n in names
        )

    try:
        exporter = service.exporter
        until(lambda: settled(["a", "b", "c"]))
        before = state(["a", "b", "c"])
        assert all(pid is not None and started is not None for pid, started, _ in before.values())
        _quiet_target_file(targets, "d", dsn)
        assert service.targets_dir_changed() and service.reload()
        assert service.exporter is exporter and list(exporter.targets) == ["a", "b", "c", "d"]
        until(lambda: settled(["d"]))
        assert state(["a", "b", "c"]) == before  # same backends, same results: nothing restarted
        assert samples(service.server.exporter.render_metrics("")[0].decode()) >= {  # type: ignore[union-attr]
            ("partkey_up", "partkey_up", (("target", "d"),), 1.0)
        }
        _quiet_target_file(targets, "b", dsn, interval="2h")  # b's config changed: b alone restarts
        old_b = exporter.targets["b"]
        assert service.targets_dir_changed() and service.reload()
        until(lambda: settled(["b"]))
        assert exporter.targets["b"] is not old_b and old_b.backend_pid is None
        assert state(["a", "c"]) == {name: before[name] for name in ("a", "c")}
        (targets / "c.yaml").unlink()
        closed_pid = before["c"][0]
        assert service.targets_dir_changed() and service.reload()
        assert list(exporter.targets) == ["a", "b", "d"]
        assert state(["a"]) == {"a": before["a"]}
        assert not any(key[0] == "c" for key in exporter.store.current.results)
        body = exporter.render_metrics("")[0].decode()
        assert 'target="c"' not in body and 'target="d"' in body
        until(
            lambda: (
                conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (closed_pid,)).fetchone() == (0,)
            )
        )
        assert {job.id.split("/")[0] for job in exporter.scheduler.get_jobs()} == {"a", "b", "d"}
    finally:
        service.stop()


@pytest.mark.parametrize("grace", ["exporter", "apscheduler-default"])
def test_a_check_queued_behind_a_full_pool_still_runs_once(grace: str) -> None:
    """A check due while every worker is busy runs when the pool frees up, once; a 1 s grace would drop it."""
    # Workers are busy when, say, every one waits for a connection slot under max_connections.
    scheduler = make_scheduler(max_workers=1)
    options = JOB_OPTIONS if grace == "exporter" else {**JOB_OPTIONS, "misfire_grace_time": 1}
    gate = threading.Event()
    executed: list[datetime] = []
    missed: list[datetime] = []

    def record(event: JobExecutionEvent) -> None:
        if event.job_id == "check":
            (executed if event.code == EVENT_JOB_EXECUTED else missed).append(event.scheduled_run_time)

    scheduler.add_listener(record, EVENT_JOB_EXECUTED | EVENT_JOB_MISSED)
    now = datetime.now(UTC)
    due = now + timedelta(seconds=0.2)
    scheduler.add_job(gate.wait, "interval", args=[60], seconds=3600, next_run_time=now, id="busy", **options)
    scheduler.add_job(lambda: None, "interval", seconds=0.5, next_run_time=due, id="check", **options)
    scheduler.start()
    try:
        # Every slot up to due + 2 s came while the pool was busy; the release comes over 1 s (the default grace)
        # after the last of them.
        window = due + timedelta(seconds=2)
        until(lambda: datetime.now(UTC) > window + timedelta(seconds=1.2))
        gate.set()
        until(lambda: any(run > window for run in executed + missed))
    finally:
        scheduler.shutdown(wait=False)
    late = [run for run in executed if run <= window]
    if grace == "exporter":
        assert (len(late), missed) == (1, [])  # ran, once for all the slots it missed
    else:
        assert (
            late == [] and len([run for run in missed if run <= window]) == 1
        )  # the behaviour misfire_grace_time=None is there to prevent
