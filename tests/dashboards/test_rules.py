"""Prometheus rules: promtool accepts and unit-tests them; names and annotations follow the mixin rules."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from dashboards import rules
from dashboards.generate import ROOT
from tests.dashboards.promtool import run_promtool

ALERTS_FILE = ROOT / "alerts.yaml"
TEST_FILE = Path(__file__).with_name("alerts.test.yaml")
RUNBOOK = ROOT / "runbook.md"
GRAFANA_ALERTS = ROOT / "provisioning" / "alerting" / "partkey-critical.yaml"

REQUIRED = {
    "PartkeyExporterDown",
    "PartkeyTargetDown",
    "PartkeyMismatchedRows",
    "PartkeyNullKeys",
    "PartkeyCheckFailing",
    "PartkeyVerificationStale",
    "PartkeyPartitionSkew",
    "PartkeyPartitionGrowthOutlier",
    "PartkeyDefaultPartitionRows",
    "PartkeyInsertLatencyHigh",
    "PartkeyNonOptimalImplementation",
}


def _alert_rules() -> list[dict[str, Any]]:
    """The alerting rules as Prometheus reads them from the committed file."""
    document = yaml.safe_load(ALERTS_FILE.read_text())
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def _by_name() -> dict[str, dict[str, Any]]:
    """Alerting rules keyed by name."""
    return {rule["alert"]: rule for rule in _alert_rules()}


def test_promtool_check_rules() -> None:
    """promtool parses every rule: 7 recording rules and 17 alerts."""
    result = run_promtool("check", "rules", ALERTS_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 24 rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    """The unit tests in alerts.test.yaml pass against the committed rules."""
    result = run_promtool("test", "rules", TEST_FILE.name, cwd=TEST_FILE.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """A wrong expectation makes promtool fail, so the passing run above means something."""
    broken = TEST_FILE.read_text().replace("found by the full verification", "found by the sample one")
    broken = broken.replace("../../dashboards/alerts.yaml", str(ALERTS_FILE))
    (tmp_path / "broken.test.yaml").write_text(broken)
    result = run_promtool("test", "rules", "broken.test.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert "alertname: PartkeyMismatchedRows, time: 7m" in result.stdout + result.stderr


def test_the_required_alerts_exist_with_their_severities() -> None:
    """The issue's list of alerts, and the severities it asks for."""
    alerts = _by_name()
    assert set(alerts) >= REQUIRED
    assert {name: rule["labels"]["severity"] for name, rule in alerts.items()} == {
        "PartkeyExporterDown": "critical",
        "PartkeyTargetDown": "critical",
        "PartkeyMismatchedRows": "critical",
        "PartkeyNullKeys": "critical",
        "PartkeyExpressionErrorRows": "warning",
        "PartkeyKeyFormulaOverflow": "warning",
        "PartkeyCheckFailing": "warning",
        "PartkeyVerificationStale": "warning",
        "PartkeyPartitionSkew": "warning",
        "PartkeyPartitionGrowthOutlier": "warning",
        "PartkeyDefaultPartitionRows": "warning",
        "PartkeyInsertLatencyHigh": "warning",
        "PartkeyInsertProbeFailing": "warning",
        "PartkeyScanReplayLagHigh": "warning",
        "PartkeyKeyFormulaDrift": "warning",
        "PartkeySchemaFormulaOverflows": "warning",
        "PartkeyNonOptimalImplementation": "info",
    }


def test_skew_and_staleness_follow_the_issue() -> None:
    """Skew: above 1.5 for 30m. Staleness: measured in the check's own interval."""
    alerts = _by_name()
    assert alerts["PartkeyPartitionSkew"]["for"] == "30m"
    assert alerts["PartkeyPartitionSkew"]["expr"].endswith("> 1.5")
    assert "partkey_check_interval_seconds" in alerts["PartkeyVerificationStale"]["expr"]
    # Growth: bytes added over an hour, against the table's average partition, with a floor.
    growth = alerts["PartkeyPartitionGrowthOutlier"]
    assert growth["for"] == "30m" and "delta(partkey_partition_bytes[1h])" in growth["expr"]
    assert "avg without (partition)" in growth["expr"] and growth["expr"].endswith(f"> {64 * 1024**2}")
    assert "partkey_check_last_success_timestamp_seconds" in alerts["PartkeyVerificationStale"]["expr"]


def test_mixin_conventions() -> None:
    """CamelCase Partkey names, a severity, a static summary, a templated description, a runbook link."""
    for rule in _alert_rules():
        name = rule["alert"]
        assert re.fullmatch(r"Partkey(?:[A-Z][a-z0-9]*)+", name), name
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, name
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        assert "{{" not in annotations["summary"], name
        assert annotations["summary"].endswith("."), name
        assert "{{ $labels." in annotations["description"], name
        assert annotations["runbook_url"] == f"dashboards/runbook.md#{name}", name


def test_runbook_has_a_section_per_alert() -> None:
    """Each runbook_url anchor exists, and each section says how to confirm and how to fix."""
    text = RUNBOOK.read_text()
    sections = re.split(r"\n<a id=\"(\w+)\"></a>\n", text)
    found = dict(zip(sections[1::2], sections[2::2], strict=True))
    assert sorted(found) == sorted(_by_name())
    for name, body in found.items():
        assert body.startswith(f"## {name}\n"), name
        assert "**Meaning" in body and "**Confirm.**" in body and "**Fix.**" in body, name
        assert "partkey-exporter" in body or "partkey-migrate" in body, name


def test_every_alert_has_firing_quiet_and_for_edge_tests() -> None:
    """alerts.test.yaml fires each alert exactly when `for` has elapsed and not one evaluation earlier."""
    document = yaml.safe_load(TEST_FILE.read_text())
    cases: dict[str, list[tuple[int, int]]] = {}
    for test in document["tests"]:
        for case in test.get("alert_rule_test", []):
            minutes = int(case["eval_time"].removesuffix("m"))
            cases.setdefault(case["alertname"], []).append((minutes, len(case["exp_alerts"])))
    alerts = _by_name()
    assert sorted(cases) == sorted(alerts)
    for name, evaluations in cases.items():
        firing = [m for m, n in evaluations if n > 0]
        quiet = [m for m, n in evaluations if n == 0]
        assert firing and quiet, name
        assert min(firing) - 1 in quiet, f"{name}: no test one minute before it first fires"
        # Where the bad value starts at 0m, the first firing evaluation is exactly the `for` duration.
        for_minutes = {"5m": 5, "10m": 10, "15m": 15, "30m": 30, "1h": 60}[alerts[name]["for"]]
        assert min(firing) >= for_minutes, name


def test_exact_labels_and_annotations_are_asserted() -> None:
    """Each firing expectation lists the severity and all three annotations literally."""
    document = yaml.safe_load(TEST_FILE.read_text())
    for test in document["tests"]:
        for case in test.get("alert_rule_test", []):
            for expected in case["exp_alerts"]:
                assert "severity" in expected["exp_labels"], case["alertname"]
                assert set(expected["exp_annotations"]) == {"summary", "description", "runbook_url"}
                assert "{{" not in expected["exp_annotations"]["description"]


def test_grafana_managed_copies_match_the_prometheus_alerts() -> None:
    """Each critical alert is provisioned in Grafana with the same query, threshold, for and annotations."""
    document = yaml.safe_load(GRAFANA_ALERTS.read_text())
    assert document["apiVersion"] == 1
    (group,) = document["groups"]
    assert group["folder"] == "Partkey"
    provisioned = {rule["title"]: rule for rule in group["rules"]}
    alerts = _by_name()
    critical = sorted(n for n, r in alerts.items() if r["labels"]["severity"] == "critical")
    assert (
        sorted(provisioned)
        == critical
        == [
            "PartkeyExporterDown",
            "PartkeyMismatchedRows",
            "PartkeyNullKeys",
            "PartkeyTargetDown",
        ]
    )
    symbols = {"gt": ">", "lt": "<"}
    for name, rule in provisioned.items():
        prom = alerts[name]
        query, reduce, threshold = rule["data"]
        assert [query["refId"], reduce["refId"], threshold["refId"]] == ["A", "B", "C"]
        assert rule["condition"] == "C"
        assert query["datasourceUid"] == rules.GRAFANA_DATASOURCE_UID
        assert reduce["model"] == {
            "expression": "A",
            "reducer": "last",
            "refId": "B",
            "type": "reduce",
            "datasource": {"type": "__expr__", "uid": "__expr__"},
        }
        evaluator = threshold["model"]["conditions"][0]["evaluator"]
        value = evaluator["params"][0]
        grafana_query = query["model"]["expr"]
        # A bare selector is compared as it is; a longer query (an `or`) is compared as a whole.
        compared = grafana_query if " " not in grafana_query else f"({grafana_query})"
        assert prom["expr"] == f"{compared} {symbols[evaluator['type']]} {value:g}", name
        assert rule["for"] == prom["for"]
        assert rule["labels"] == prom["labels"]
        assert rule["annotations"]["summary"] == prom["annotations"]["summary"]
        assert rule["annotations"]["runbook_url"] == prom["annotations"]["runbook_url"]
        assert rule["annotations"]["description"] == prom["annotations"]["description"].replace(
            "$value", "$values.B.Value"
        )
        assert len(rule["uid"]) <= 40 and rule["uid"].startswith("partkey-")
        assert not {"folderUID", "ruleGroup", "orgID"} & set(rule)


def test_alerts_do_not_read_recording_rules() -> None:
    """Rule groups run concurrently: an alert reading another group's recorded series lags at random."""
    for rule in _alert_rules():
        assert ":" not in re.sub(r"\[[^\]]*\]", "", rule["expr"]), rule["alert"]
