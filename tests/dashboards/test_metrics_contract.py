"""Dashboards and rules use exactly the metric names and labels docs/metrics.md says the exporter exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dashboards.generate import DASHBOARD_DIR
from dashboards.queries import NamedQuery, all_queries
from dashboards.rules import RECORDING_RULES

METRICS_DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
# Labels Prometheus adds to every scraped series, and the ones histograms and our recording rules add.
SCRAPE_LABELS = {"job", "instance"}
_METRIC = re.compile(r"(?<![\w:])(partkey_\w+|up)(?![\w:(])")
_RECORDED = re.compile(r"\b(\w+:\w+:\w+)\b")
_SELECTOR = re.compile(r"(?<![\w:])([a-z_]+(?::\w+:\w+)?)\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def documented() -> dict[str, tuple[str, set[str]]]:
    """Metric name -> (type, labels) from the table in docs/metrics.md, histograms expanded."""
    metrics: dict[str, tuple[str, set[str]]] = {}
    for line in METRICS_DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`partkey_"):
            continue
        names = re.findall(r"`(\w+)`", cells[0])
        labels = {label.strip() for label in cells[2].split(",") if label.strip()}
        # "`partkey_partition_rows_avg` / `_max` / `_min`": a suffix replaces the first name's last part.
        base = names[0].rsplit("_", 1)[0]
        for name in names:
            full = base + name if name.startswith("_") else name
            if cells[1] == "histogram":
                metrics[full + "_bucket"] = (cells[1], labels | {"le"})
                metrics[full + "_count"] = (cells[1], labels)
                metrics[full + "_sum"] = (cells[1], labels)
            else:
                metrics[full] = (cells[1], labels)
    return metrics


def _recorded_labels() -> dict[str, set[str]]:
    """Labels each recording rule's series may carry (labels of its inputs, plus its own)."""
    metrics = documented()
    result: dict[str, set[str]] = {}
    for rule in RECORDING_RULES:
        labels = set(rule.labels) | SCRAPE_LABELS
        for name in _METRIC.findall(rule.expr):
            labels |= metrics[name][1]
        for name in _RECORDED.findall(rule.expr):
            labels |= result[name]
        result[rule.record] = result.get(rule.record, set()) | labels
    return result


def test_the_doc_parses() -> None:
    """The doc's table is read completely, including the combined rows."""
    metrics = documented()
    # At least these many (other branches add rows); each combined row counted once per name.
    assert len(metrics) >= 43
    assert metrics["partkey_partition_bytes"] == ("gauge", {"target", "table", "partition", "kind"})
    assert metrics["partkey_partitions_stale_statistics"] == ("gauge", {"target", "table"})
    assert metrics["partkey_partition_rows_min"] == ("gauge", {"target", "table", "source"})
    assert metrics["partkey_partitions_empty"] == ("gauge", {"target", "table", "source"})
    assert metrics["partkey_insert_probe_duration_seconds_bucket"] == ("histogram", {"target", "table", "le"})
    assert metrics["partkey_rows_verified_total"] == ("counter", {"target", "table", "mode"})


@pytest.fixture(scope="module")
def queries() -> list[NamedQuery]:
    """Every expression of the dashboards and rules."""
    return all_queries()


def test_only_documented_metrics_are_used(queries: list[NamedQuery]) -> None:
    """No panel or rule reads a metric the exporter does not export."""
    metrics = documented()
    recorded = {rule.record for rule in RECORDING_RULES}
    for q in queries:
        for name in _METRIC.findall(q.expr):
            assert name == "up" or name in metrics, f"{q.name}: {name} is not in docs/metrics.md"
        for name in _RECORDED.findall(q.expr):
            assert name in recorded, f"{q.name}: {name} is not a recording rule"


def test_rate_only_on_counters_and_histograms(queries: list[NamedQuery]) -> None:
    """rate()/increase() only ever see counters; gauges use delta()/deriv()."""
    metrics = documented()
    for q in queries:
        for function, name in re.findall(r"\b(rate|increase|irate)\((partkey_\w+)", q.expr):
            assert metrics[name][0] in {"counter", "histogram"}, f"{q.name}: {function}() of gauge {name}"
        for function, name in re.findall(r"\b(delta|deriv)\((partkey_\w+)", q.expr):
            assert metrics[name][0] == "gauge", f"{q.name}: {function}() of {metrics[name][0]} {name}"


def test_only_existing_labels_are_matched_or_grouped(queries: list[NamedQuery]) -> None:
    """Matchers name labels the metric has; by/without/on/ignoring name labels some input has."""
    metrics = documented()
    recorded = _recorded_labels()

    def labels_of(name: str) -> set[str]:
        if name == "up":
            return SCRAPE_LABELS
        return recorded[name] if ":" in name else metrics[name][1] | SCRAPE_LABELS

    for q in queries:
        for name, matchers in _SELECTOR.findall(q.expr):
            used = set(_MATCHER_LABEL.findall(matchers))
            assert used <= labels_of(name), f"{q.name}: {name} has no label {sorted(used - labels_of(name))}"
        names = _METRIC.findall(q.expr) + _RECORDED.findall(q.expr)
        available = set().union(*(labels_of(n) for n in names))
        for group in _GROUPING.findall(q.expr):
            used = {label.strip() for label in group.split(",") if label.strip()}
            assert used <= available, f"{q.name}: groups by unknown {sorted(used - available)}"


def test_legends_name_labels_the_result_has() -> None:
    """{{label}} in a legend refers to a label that survives the query's aggregation."""
    checked = 0
    for path in sorted(DASHBOARD_DIR.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                legend = set(re.findall(r"\{\{(\w+)\}\}", target.get("legendFormat", "")))
                by = re.search(r"^\w+ by \(([^)]*)\)", target["expr"])
                if by:
                    kept = {label.strip() for label in by.group(1).split(",")}
                    assert legend <= kept, f"{panel['title']}: legend {legend - kept} is aggregated away"
                    checked += 1
    assert checked == 4
