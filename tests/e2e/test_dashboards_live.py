"""Every dashboard panel, variable and rule runs against a real Prometheus scraping the live exporter."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from dashboards.queries import ALERTS_FILE, all_queries
from dashboards.rules import GROWTH_MIN_BYTES
from exporter.app import Exporter
from exporter.config import parse_config
from exporter.demo import STALE_ROWS, DemoFacts, demo_config_yaml
from tests.e2e.prometheus import query, running_prometheus, wait_for
from tests.support import serving

pytestmark = pytest.mark.e2e


def _fast_rules(directory: Path) -> Path:
    """dashboards/alerts.yaml with every `for:` cut to 2s, so alerts can fire within the test."""
    document = yaml.safe_load(ALERTS_FILE.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "2s"
            if rule.get("alert") == "PartkeyPartitionGrowthOutlier":
                # A test cannot add 64 MiB to a partition in seconds; keep the rule, drop the floor.
                rule["expr"] = rule["expr"].replace(f"> {GROWTH_MIN_BYTES}", "> 0")
    path = directory / "alerts-fast.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


# Rows whose id hashes to key 7 (the demo's trigger computes the key), ~1.3 kB each of text that does not compress.
_GROW_ONE = """
INSERT INTO chunks (collection_id, partition_key, content)
SELECT id, 7, (SELECT string_agg(md5(random()::text || id::text || i), '') FROM generate_series(1, 40) i)
FROM (SELECT md5('grow-' || g)::uuid AS id FROM generate_series(1, 6000) g) ids
WHERE abs(hashtext(id::text) % 100) = 7
"""


def _alerts(prometheus: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(prometheus + "/api/v1/alerts", timeout=10) as response:  # noqa: S310
        alerts: list[dict[str, Any]] = json.loads(response.read())["data"]["alerts"]
    return alerts


# 35 s (it keeps writing for 25 s so rate panels see change): in make test-reliability, not make test.
@pytest.mark.slow
def test_every_panel_and_rule_returns_data(
    demo: tuple[str, DemoFacts], demo_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    dsn, conn = demo[0], demo_conn
    # A DEFAULT partition, so the default-partition panels have a series too.
    conn.execute("CREATE TABLE chunks_default PARTITION OF chunks DEFAULT")
    conn.execute("ANALYZE chunks")
    exporter = Exporter(parse_config(demo_config_yaml(dsn, 0, fast=True), "<e2e>"))
    exporter.run_all_once()
    exporter.start()
    with serving(exporter) as server:
        host, port = server.server_address[:2]
        with running_prometheus(f"{host!s}:{port}", rule_files=[_fast_rules(tmp_path)]) as prometheus:
            # Keep writing a little, so growth and rate panels see change, and wait for enough scrapes.
            deadline = time.monotonic() + 25
            while time.monotonic() < deadline:
                conn.execute(
                    "INSERT INTO chunks (collection_id, partition_key) SELECT md5(g::text)::uuid, "
                    "abs(hashtext(md5(g::text)::uuid::text) % 100) FROM generate_series(1, 200) g"
                )
                # One partition grows much faster than its siblings, in bytes: wide rows into key 7, and an
                # ANALYZE of it alone, which refreshes its page count (the siblings' stay as they were).
                conn.execute(_GROW_ONE)
                conn.execute("ANALYZE chunks_part_07")
                time.sleep(1)
            empty: list[str] = []
            failing: list[str] = []
            for item in all_queries("demo", "public.chunks", rate_interval="10s", interval="1s", range_="1m"):
                try:
                    result = query(prometheus, item.expr)
                except Exception as error:  # a PromQL error names the query that broke
                    failing.append(f"{item.name}: {error}")
                    continue
                if not result and item.kind in ("panel", "variable", "record") and not _needs_a_standby(item.expr):
                    empty.append(f"{item.name}: {item.expr}")
            mismatched = query(prometheus, 'partkey_mismatched_rows{mode="full"}')
            default_rows = wait_for(prometheus, 'partkey_default_partition_rows{source="exact"}')
            firing: list[dict[str, Any]] = []
            growing: list[dict[str, Any]] = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not (firing and growing):
                alerts = [a for a in _alerts(prometheus) if a["state"] == "firing"]
                firing = [a for a in alerts if a["labels"]["alertname"] == "PartkeyMismatchedRows"]
                growing = [a for a in alerts if a["labels"]["alertname"] == "PartkeyPartitionGrowthOutlier"]
                time.sleep(1)
    assert failing == []
    assert empty == []
    assert float(mismatched[0]["value"][1]) == STALE_ROWS
    assert float(default_rows[0]["value"][1]) == 0
    assert firing, "PartkeyMismatchedRows never reached firing"
    assert {a["labels"]["mode"] for a in firing} >= {"full"}
    assert firing[0]["labels"]["severity"] == "critical"
    assert growing, "PartkeyPartitionGrowthOutlier never reached firing"
    assert {a["labels"]["partition"] for a in growing} == {"chunks_part_07"}  # that one, none of its siblings


def _needs_a_standby(expr: str) -> bool:
    """Series that exist only with a `scan_dsn` standby, which this demo has none of (tests/test_standby.py has one)."""
    return "partkey_scan_" in expr
