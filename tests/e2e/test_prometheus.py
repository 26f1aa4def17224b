"""End to end: a real Prometheus scrapes the exporter and sees the wrong-key count the database holds."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from exporter.app import Exporter
from exporter.config import parse_config
from exporter.demo import STALE_ROWS, DemoFacts, demo_config_yaml
from tests.e2e.prometheus import running_prometheus, wait_for
from tests.schema import scalar
from tests.support import serving

pytestmark = pytest.mark.e2e


def test_prometheus_sees_mismatched_rows(demo: tuple[str, DemoFacts], demo_conn: psycopg.Connection[Any]) -> None:
    dsn, facts = demo
    exporter = Exporter(parse_config(demo_config_yaml(dsn, 0), "<e2e>"))
    exporter.run_all_once()
    with serving(exporter) as server:
        host, port = server.server_address[:2]
        with running_prometheus(f"{host!s}:{port}") as prometheus:
            mismatched = wait_for(prometheus, 'partkey_mismatched_rows{mode="full"}')
            up = wait_for(prometheus, "partkey_up")
            partitions = wait_for(prometheus, 'count(partkey_partition_rows{source="exact"})')
            total = wait_for(prometheus, 'sum(partkey_partition_rows{source="exact"})')
    assert len(mismatched) == 1
    assert mismatched[0]["metric"]["table"] == "public.chunks"
    assert float(mismatched[0]["value"][1]) == STALE_ROWS == facts.stale_rows
    assert float(up[0]["value"][1]) == 1
    assert float(partitions[0]["value"][1]) == 100
    assert float(total[0]["value"][1]) == scalar(demo_conn, "SELECT count(*) FROM chunks")
