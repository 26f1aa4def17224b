"""docker-compose.yml and the provisioning files agree with each other and with the rules (no Docker here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import yaml

from dashboards import rules
from dashboards.common import EXPORTER_JOB
from dashboards.generate import DASHBOARD_DIR, ROOT
from tests.dashboards.promtool import run_promtool

REPO = ROOT.parent
PORT = 19187


def _yaml(relative: str) -> Any:
    """A YAML file under dashboards/."""
    return yaml.safe_load((ROOT / relative).read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The parsed docker-compose.yml."""
    data: dict[str, Any] = _yaml("docker-compose.yml")
    return data


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        host, container, *_ = volume.split(":")
        mounts[container] = (ROOT / host).resolve()
    return mounts


def test_services_and_exporter_image(compose: dict[str, Any]) -> None:
    """Four services; the exporter is built from the repo's Dockerfile and runs the documented command."""
    services = compose["services"]
    assert sorted(services) == ["exporter", "grafana", "postgres", "prometheus"]
    exporter = services["exporter"]
    assert (ROOT / exporter["build"]["context"]).resolve() == REPO
    assert exporter["build"]["dockerfile"] == "Dockerfile"
    assert [*exporter["entrypoint"], *exporter["command"]] == [
        "partkey-exporter",
        "run",
        "--config",
        "/etc/partkey/config.yaml",
    ]
    assert exporter["ports"] == [f"{PORT}:{PORT}"]
    assert exporter["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["grafana"]["image"].startswith("grafana/grafana:11.")


def test_every_bind_mount_exists(compose: dict[str, Any]) -> None:
    """Each host path a service mounts is in the repository."""
    for name, service in compose["services"].items():
        for container, host in _mounts(service).items():
            assert host.exists(), f"{name}: {host} (for {container}) is missing"


def test_dockerfile_is_in_the_repository() -> None:
    """The exporter image builds from the repository root's Dockerfile (written by the daemon's developer)."""
    if not (REPO / "Dockerfile").exists():
        pytest.skip("the repository has no Dockerfile yet; docker-compose.yml builds the exporter from it")
    text = (REPO / "Dockerfile").read_text()
    assert f"EXPOSE {PORT}" in text
    # compose sets the entrypoint itself, so only the executable has to exist in the image.
    assert 'ENTRYPOINT ["partkey-exporter"]' in text


def test_prometheus_config(compose: dict[str, Any]) -> None:
    """promtool accepts prometheus.yml; it scrapes the exporter service under the job the rules expect."""
    result = run_promtool("check", "config", ROOT / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    config = _yaml("prometheus.yml")
    (job,) = config["scrape_configs"]
    assert job["job_name"] == EXPORTER_JOB
    assert job["static_configs"] == [{"targets": [f"exporter:{PORT}"]}]
    assert config["rule_files"] == ["alerts.yaml"]
    mounts = _mounts(compose["services"]["prometheus"])
    assert mounts["/etc/prometheus/prometheus.yml"] == ROOT / "prometheus.yml"
    # rule_files is relative to the config file, so both must sit in the same container directory.
    assert mounts["/etc/prometheus/alerts.yaml"] == ROOT / "alerts.yaml"


def test_grafana_provisioning(compose: dict[str, Any]) -> None:
    """Datasource uid, dashboard folder and paths match what the rules and compose file expect."""
    datasources = _yaml("provisioning/datasources/partkey.yaml")
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["uid"] == rules.GRAFANA_DATASOURCE_UID
    assert source["type"] == "prometheus"
    assert source["access"] == "proxy"
    assert source["isDefault"] is True
    assert urlsplit(source["url"]).netloc == "prometheus:9090"
    assert "9090:9090" in compose["services"]["prometheus"]["ports"]

    dashboards = _yaml("provisioning/dashboards/partkey.yaml")
    (provider,) = dashboards["providers"]
    assert provider["type"] == "file"
    assert provider["folder"] == rules.GRAFANA_FOLDER
    mounts = _mounts(compose["services"]["grafana"])
    assert mounts[provider["options"]["path"]] == DASHBOARD_DIR
    assert mounts["/etc/grafana/provisioning/datasources"] == ROOT / "provisioning" / "datasources"
    assert mounts["/etc/grafana/provisioning/dashboards"] == ROOT / "provisioning" / "dashboards"
    assert mounts["/etc/grafana/provisioning/alerting"] == ROOT / "provisioning" / "alerting"

    alerting = _yaml("provisioning/alerting/partkey-critical.yaml")
    assert alerting["groups"][0]["folder"] == provider["folder"]


def _exporter_env(compose: dict[str, Any]) -> dict[str, str]:
    """The exporter service's environment."""
    env: dict[str, str] = compose["services"]["exporter"]["environment"]
    return env


def test_exporter_config_validates(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The exporter's own loader accepts compose/partkey.yaml with the compose environment."""
    config_module = pytest.importorskip("exporter.config")
    for name, value in _exporter_env(compose).items():
        monkeypatch.setenv(name, value)
    config = config_module.load_config(ROOT / "compose" / "partkey.yaml")
    assert (config.listen.address, config.listen.port) == ("0.0.0.0", PORT)
    (target,) = config.targets
    assert target.name == "demo"
    assert [t.label for t in target.tables] == ["public.chunks"]
    assert target.tables[0].checks.insert_probe.enabled is True
    dsn = urlsplit(_exporter_env(compose)["PARTKEY_DSN"])
    postgres = compose["services"]["postgres"]
    assert dsn.hostname == "postgres" and dsn.port == 5432
    assert dsn.path == "/" + postgres["environment"]["POSTGRES_DB"]
    init_sql = (ROOT / "compose" / "initdb" / "10-chunks.sql").read_text()
    assert f"CREATE ROLE {dsn.username} LOGIN PASSWORD '{dsn.password}';" in init_sql


def test_demo_database_and_exporter_role(dsn: str, compose: dict[str, Any]) -> None:
    """The init SQL builds the demo table; the exporter's role, with its grants only, finds 7 stale keys."""
    role = f"partkey_exporter_t{os.getpid()}"
    sql = (ROOT / "compose" / "initdb" / "10-chunks.sql").read_text().replace("partkey_exporter", role)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        try:
            conn.execute(sql)  # a trusted file of several statements
            assert conn.execute("SELECT count(*) FROM chunks").fetchone() == (100_000,)
            assert conn.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'chunks'::regclass").fetchone() == (
                100,
            )
            wrong = conn.execute(
                "SELECT count(*) FROM chunks WHERE partition_key <> abs(hashtext(collection_id::text) % 100)"
            ).fetchone()
            assert wrong == (7,)

            password = urlsplit(_exporter_env(compose)["PARTKEY_DSN"]).password
            role_dsn = psycopg.conninfo.make_conninfo(dsn, user=role, password=password)
            env = {**os.environ, "PARTKEY_DSN": role_dsn}
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "exporter.cli",
                    "verify",
                    "--config",
                    str(ROOT / "compose" / "partkey.yaml"),
                    "--mode",
                    "full",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
                cwd=REPO,
                check=False,
            )
            assert result.returncode == 1, result.stdout + result.stderr  # 1 = bad keys found
            expected = "demo/public.chunks: 100000 rows checked (full), 7 wrong keys, 0 NULL keys"
            assert expected in result.stdout
        finally:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE IF EXISTS {role}")
