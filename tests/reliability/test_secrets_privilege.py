"""A real role with a real password (scram-sha-256): it never leaks; the README's least-privilege role suffices; a
missing privilege fails only the check that needs it, and names it."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from exporter.app import Exporter
from exporter.config import ChecksConfig
from tests.reliability.harness import PrivateServer, answered, get, scrape, start_daemon
from tests.schema import create_list_table, insert_rows
from tests.support import config_for, http, parse, poll

ROLE = "partkey_monitor"


@pytest.fixture
def monitored(own_server: PrivateServer, own_dsn: str) -> Iterator[tuple[str, str]]:
    """The chunks table and the README's partkey_monitor role, whose password the server really checks."""
    password = "Pw" + secrets.token_hex(12)
    with psycopg.connect(own_dsn, autocommit=True) as conn:
        create_list_table(conn, modulus=4, trigger="parent")
        insert_rows(conn, 300, modulus=4)
        conn.execute("ANALYZE chunks")
        conn.execute(f"DROP ROLE IF EXISTS {ROLE}")
        # Exactly the README's "Least privilege" SQL (the probe is on in these tests, so INSERT too).
        conn.execute(f"CREATE ROLE partkey_monitor LOGIN PASSWORD '{password}' IN ROLE pg_monitor")
        conn.execute("GRANT USAGE ON SCHEMA public TO partkey_monitor")
        conn.execute("GRANT SELECT ON public.chunks TO partkey_monitor")
        conn.execute("GRANT INSERT ON public.chunks TO partkey_monitor")
    own_server.set_hba([f"local all {ROLE} scram-sha-256"])
    dbname = psycopg.conninfo.conninfo_to_dict(own_dsn)["dbname"]
    try:
        yield own_server.dsn_for(str(dbname), ROLE, password), password
    finally:
        own_server.reset_hba()
        with psycopg.connect(own_dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (ROLE,))
            conn.execute(f"DROP OWNED BY {ROLE}")
            conn.execute(f"DROP ROLE {ROLE}")


ALL_CHECKS = """modulus: 4
monotonic_column: id
checks:
  verification_sample: {percent: 100}
  insert_probe: {enabled: true}"""


def test_every_check_succeeds_as_the_readme_role(monitored: tuple[str, str], own_dsn: str) -> None:
    dsn, _ = monitored
    exporter = Exporter(config_for(dsn, ALL_CHECKS))
    exporter.run_all_once()
    exporter.run_all_once()  # the incremental verification's second run actually verifies
    results = {check: r for (_, _, check), r in exporter.store.current.results.items()}
    exporter.stop()
    assert sorted(results) == sorted(ChecksConfig.model_fields)
    assert {c: r.error for c, r in results.items() if not r.success} == {}
    assert results["verification_full"].payload.rows_checked == 300
    with psycopg.connect(own_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM chunks").fetchone() == (300,)  # the probe left nothing behind


def test_without_insert_only_the_probe_fails_naming_the_privilege(monitored: tuple[str, str], own_dsn: str) -> None:
    dsn, _ = monitored
    with psycopg.connect(own_dsn, autocommit=True) as conn:
        conn.execute(f"REVOKE INSERT ON public.chunks FROM {ROLE}")
    exporter = Exporter(config_for(dsn, ALL_CHECKS))
    exporter.run_all_once()
    results = {check: r for (_, _, check), r in exporter.store.current.results.items()}
    up = exporter.targets["t1"].up
    exporter.stop()
    failing = {c: r.error for c, r in results.items() if not r.success}
    assert list(failing) == ["insert_probe"]
    assert failing["insert_probe"] is not None
    assert failing["insert_probe"].startswith("missing privilege: permission denied for table chunks")
    assert up is True  # a missing privilege is not an outage


def test_missing_privilege_fails_one_check_and_names_it(conn: psycopg.Connection[Any], dsn: str) -> None:
    create_list_table(conn, modulus=4, trigger=None)
    insert_rows(conn, 50, modulus=4)
    role = f"partkey_noselect_{os.getpid()}"  # roles are server-wide: a name no other test process uses
    conn.execute(f"DROP ROLE IF EXISTS {role}")
    conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw' IN ROLE pg_monitor")
    try:
        info = conn.info
        weak = f"host={info.host} port={info.port} dbname={info.dbname} user={role} password=pw"
        exporter = Exporter(config_for(weak, "modulus: 4"))
        exporter.run_all_once()
        full = exporter.store.latest("t1", "public.chunks", "verification_full")
        implementation = exporter.store.latest("t1", "public.chunks", "implementation")
        estimate = exporter.store.latest("t1", "public.chunks", "distribution")
        assert full is not None and not full.success
        assert full.error is not None and full.error.startswith("missing privilege: permission denied")
        assert implementation is not None and implementation.success
        assert estimate is not None and estimate.success
        exporter.stop()
    finally:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")


def test_password_never_appears(monitored: tuple[str, str], own_server: PrivateServer, tmp_path: Path) -> None:
    dsn, password = monitored
    wrong = "Wrong" + secrets.token_hex(12)
    wrong_dsn = dsn.replace(password, wrong)
    unreachable = f"postgresql://{ROLE}:{password}@127.0.0.1:1/nowhere?connect_timeout=1"
    path = tmp_path / "partkey.yaml"
    targets = "".join(
        f"""
  - name: {name}
    dsn: "{target_dsn}"
    tables:
      - table: chunks
        modulus: 4
        checks: {{implementation: {{interval: 1s}}, distribution: {{interval: 1s}},
                  insert_probe: {{enabled: true, interval: 1s}}}}
"""
        for name, target_dsn in [("good", dsn), ("wrongpw", wrong_dsn), ("unreachable", unreachable)]
    )
    port, daemon = start_daemon(
        path,
        lambda port: path.write_text(
            f"listen: {{address: 127.0.0.1, port: {port}}}\nlog_level: debug\ntargets:{targets}"
        ),
    )
    url = f"http://127.0.0.1:{port}"
    seen: list[str] = []
    try:
        poll(
            lambda: (
                (s := answered(url))
                and get(s, "partkey_up", target="good") == 1
                and get(s, "partkey_check_success", target="wrongpw", table="public.chunks", check="implementation")
                == 0
            ),
            "all three targets checked",
            step=0.2,
        )
        samples_text = scrape(url)[2]
        seen.append(samples_text)
        for page in [
            "/report",
            "/report?format=json",
            "/admin/partition/health",
            "/readyz",
            "/report?target=wrongpw",
            "/report?target=unreachable&format=json",
        ]:
            seen.append(http(url + page)[2].decode())
        for target in ["good", "wrongpw", "unreachable"]:
            seen.append(
                http(url + "/admin/partition/verify", "POST", json.dumps({"target": target}).encode())[2].decode()
            )
        samples = parse(samples_text)
    finally:
        daemon.stop()
    seen.append(daemon.log)
    everything = "\n".join(seen)
    assert get(samples, "partkey_up", target="good") == 1
    assert get(samples, "partkey_up", target="wrongpw") == 0
    assert get(samples, "partkey_up", target="unreachable") == 0
    # The failures are explained (so the test looked at real error text) ...
    assert "password authentication failed" in everything
    assert "target unreachable is down" in everything
    # ... and neither the right nor the wrong password shows anywhere: logs at debug, report, JSON, metrics.
    assert password not in everything
    assert wrong not in everything
