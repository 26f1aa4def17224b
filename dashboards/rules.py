"""Prometheus recording and alerting rules, and the Grafana-managed copies of the critical alerts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from dashboards.common import EXPORTER_JOB

# Where runbook_url points. A relative path resolves in the repository browser; deployments with a
# public repo replace this prefix (see docs/dashboards.md) and regenerate with `make dashboards`.
RUNBOOK = "dashboards/runbook.md"

# The Prometheus datasource uid that provisioning/datasources creates and Grafana-managed rules query.
GRAFANA_DATASOURCE_UID = "partkey-prometheus"
GRAFANA_FOLDER = "Partkey"

# Staleness: a verification mode that has not succeeded for this many of its own intervals is silent.
STALE_INTERVALS = 3
SKEW_RATIO = 1.5
# A partition growing much faster than its siblings: its bytes added over an hour above this many times the
# table's average partition's, and above a floor so that small tables' noise does not page.
GROWTH_FACTOR = 3
GROWTH_MIN_BYTES = 64 * 1024**2
_GROWTH = "sum without (kind) (delta(partkey_partition_bytes[1h]))"
LATENCY_P99_SECONDS = 0.1
# A result taken on a scan_dsn standby this far behind the primary (with WAL waiting to be replayed) no longer
# describes the table: five minutes of an application's writes are missing from its counts.
SCAN_LAG_SECONDS = 300
PROBE_FAILURE_RATIO = 0.25

Severity = Literal["critical", "warning", "info"]


@dataclass(frozen=True)
class Recording:
    """A recording rule."""

    record: str
    expr: str
    labels: dict[str, str] = field(default_factory=dict)

    def to_yaml(self) -> dict[str, Any]:
        """The rule as Prometheus reads it."""
        rule: dict[str, Any] = {"record": self.record, "expr": self.expr}
        if self.labels:
            rule["labels"] = dict(self.labels)
        return rule


@dataclass(frozen=True)
class GrafanaCondition:
    """How a Grafana-managed copy evaluates the alert: query A, reduce B (last), threshold C."""

    query: str
    op: Literal["gt", "lt"]
    threshold: float

    @property
    def promql(self) -> str:
        """The same condition in PromQL, so both rule engines fire on exactly the same series."""
        symbol = ">" if self.op == "gt" else "<"
        # A bare selector compares as it is; anything longer (an `or`) must be compared as a whole.
        query = self.query if " " not in self.query else f"({self.query})"
        return f"{query} {symbol} {self.threshold:g}"


@dataclass(frozen=True)
class Alert:
    """An alerting rule following monitoring-mixin conventions."""

    name: str
    expr: str
    for_: str
    severity: Severity
    summary: str
    description: str
    grafana: GrafanaCondition | None = None

    @property
    def runbook_url(self) -> str:
        """Link to this alert's section of the runbook."""
        return f"{RUNBOOK}#{self.name}"

    def to_yaml(self) -> dict[str, Any]:
        """The rule as Prometheus reads it."""
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity},
            "annotations": {
                "summary": self.summary,
                "description": self.description,
                "runbook_url": self.runbook_url,
            },
        }


def _condition_alert(name: str, condition: GrafanaCondition, for_: str, summary: str, description: str) -> Alert:
    """A critical alert whose PromQL is derived from its Grafana condition, so the two cannot drift."""
    return Alert(name, condition.promql, for_, "critical", summary, description, grafana=condition)


# How long a sample's finding holds. A sample proves bad rows exist, but the next sample reads other pages and
# may miss them: without a hold the alert would go pending, reset and never fire.
SAMPLE_HOLD = "1h"


def held_for_samples(metric: str) -> str:
    """The bad-row gauge as it is for full and incremental runs; for samples, the largest count of the last hour."""
    return f'{metric}{{mode!="sample"}} or max_over_time({metric}{{mode="sample"}}[{SAMPLE_HOLD}])'


_BUCKET_RATE = "target_table_le:partkey_insert_probe_duration_seconds_bucket:rate5m"
QUANTILE_RECORD = "target_table_quantile:partkey_insert_probe_duration_seconds:histogram_quantile5m"
FAILURE_RATIO_RECORD = "target_table:partkey_insert_probe_failures:ratio_rate5m"
PARTITION_RATIO_RECORD = "target_table_partition:partkey_partition_rows:ratio_avg"
CHECK_AGE_RECORD = "target_table_check:partkey_check_last_success:age_intervals"

# Failed probes are counted apart from the histogram, so attempts = failures + observations.
_FAILURE_RATIO = (
    "sum by (target, table) (rate(partkey_insert_probe_failures_total[5m]))\n/\n"
    "(\n  sum by (target, table) (rate(partkey_insert_probe_failures_total[5m]))\n"
    "  +\n  sum by (target, table) (rate(partkey_insert_probe_duration_seconds_count[5m]))\n)"
)
_P99 = (
    "histogram_quantile(0.99,\n  sum by (target, table, le) (rate(partkey_insert_probe_duration_seconds_bucket[5m]))\n)"
)

RECORDING_RULES: tuple[Recording, ...] = (
    Recording(
        _BUCKET_RATE,
        "sum by (target, table, le) (rate(partkey_insert_probe_duration_seconds_bucket[5m]))",
    ),
    *(
        Recording(QUANTILE_RECORD, f"histogram_quantile({q}, {_BUCKET_RATE})", {"quantile": q})
        for q in ("0.5", "0.95", "0.99")
    ),
    Recording(FAILURE_RATIO_RECORD, _FAILURE_RATIO),
    # One series per partition joined with its table's average: the skew heatmap reads this directly.
    Recording(
        PARTITION_RATIO_RECORD,
        "partkey_partition_rows / ignoring (partition) group_left () partkey_partition_rows_avg",
    ),
    Recording(
        CHECK_AGE_RECORD,
        "(time() - partkey_check_last_success_timestamp_seconds) / partkey_check_interval_seconds",
    ),
)

ALERTS: tuple[Alert, ...] = (
    _condition_alert(
        "PartkeyExporterDown",
        GrafanaCondition(f'up{{job="{EXPORTER_JOB}"}}', "lt", 1),
        "5m",
        "Prometheus cannot scrape the partkey exporter.",
        "{{ $labels.instance }} (job {{ $labels.job }}) has not answered scrapes for 5 minutes;"
        " every other partkey alert is blind until it is back.",
    ),
    _condition_alert(
        "PartkeyTargetDown",
        GrafanaCondition("partkey_up", "lt", 1),
        "5m",
        "The partkey exporter cannot reach a database.",
        "Target {{ $labels.target }} has been unreachable from {{ $labels.instance }} for 5 minutes;"
        " its keys, distribution and insert latency are not being checked.",
    ),
    _condition_alert(
        "PartkeyMismatchedRows",
        GrafanaCondition(held_for_samples("partkey_mismatched_rows"), "gt", 0),
        "5m",
        "Rows carry a partition key that differs from the key expression.",
        '{{ $labels.target }} {{ $labels.table }}: {{ printf "%.0f" $value }} rows found by the'
        " {{ $labels.mode }} verification have a wrong key;"
        " queries filtered by partition key will not find them.",
    ),
    _condition_alert(
        "PartkeyNullKeys",
        GrafanaCondition(held_for_samples("partkey_null_key_rows"), "gt", 0),
        "5m",
        "Rows have a NULL partition key.",
        '{{ $labels.target }} {{ $labels.table }}: {{ printf "%.0f" $value }} rows found by the'
        " {{ $labels.mode }} verification have a NULL key;"
        " queries filtered by partition key will not find them.",
    ),
    Alert(
        "PartkeyExpressionErrorRows",
        f"({held_for_samples('partkey_expression_error_rows')}) > 0",
        "15m",
        "warning",
        "The key expression raises an error for some rows.",
        '{{ $labels.target }} {{ $labels.table }}: the key expression fails for {{ printf "%.0f" $value }}'
        " rows ({{ $labels.mode }} verification), typically abs() overflowing on hashtext() = INT_MIN.",
    ),
    Alert(
        "PartkeyKeyFormulaOverflow",
        "partkey_key_formula_overflow > 0",
        "1h",
        "warning",
        "The key formula raises for inputs that hash to INT_MIN.",
        "{{ $labels.target }} {{ $labels.table }} computes abs(hashtext(x)) % N, which fails for one hash"
        " value in 2^32; abs(hashtext(x) % N) gives the same keys without the overflow.",
    ),
    Alert(
        "PartkeyKeyFormulaDrift",
        "partkey_key_formula_drift > 0",
        "15m",
        "warning",
        "Places holding the partition-key formula disagree.",
        "{{ $labels.target }} {{ $labels.table }}: the trigger, generated column, CHECK, key helper functions or the"
        " configured expression compute different keys; rows keyed by one are rejected or misrouted by another"
        " (partkey-exporter report lists each place and what follows).",
    ),
    Alert(
        "PartkeySchemaFormulaOverflows",
        "partkey_schema_formula_overflows > 0",
        "1h",
        "warning",
        "Formulas in the schema take abs() of hashtext() and raise on INT_MIN.",
        '{{ $labels.target }} schema {{ $labels.schema }}: {{ printf "%.0f" $value }} places (functions, triggers,'
        " generated columns, CHECKs, indexes, partition keys, views) compute abs(hashtext(x)) % N.",
    ),
    Alert(
        "PartkeyCheckFailing",
        "partkey_check_success < 1",
        "15m",
        "warning",
        "A partkey check keeps failing.",
        "The {{ $labels.check }} check on {{ $labels.target }} {{ $labels.table }} has failed for 15 minutes;"
        " its other metrics still show the last successful run.",
    ),
    Alert(
        "PartkeyVerificationStale",
        '(time() - partkey_check_last_success_timestamp_seconds{check=~"verification_.*"})\n'
        f'  > {STALE_INTERVALS} * partkey_check_interval_seconds{{check=~"verification_.*"}}',
        "10m",
        "warning",
        f"No key verification has succeeded for more than {STALE_INTERVALS} check intervals.",
        "The {{ $labels.check }} check on {{ $labels.target }} {{ $labels.table }} last succeeded"
        " {{ $value | humanizeDuration }} ago; wrong keys written since then go unnoticed.",
    ),
    Alert(
        "PartkeyScanReplayLagHigh",
        # The seconds alone also grow on a standby that is caught up while the primary commits nothing; WAL
        # received but not replayed is what says the standby really is behind.
        f"partkey_scan_replay_lag_seconds > {SCAN_LAG_SECONDS}\nand\npartkey_scan_replay_lag_bytes > 0",
        "15m",
        "warning",
        "Checks run on the standby read data that is minutes old.",
        "The {{ $labels.check }} check on {{ $labels.target }} {{ $labels.table }} ran on its scan_dsn standby"
        " while replay was {{ $value | humanizeDuration }} behind the primary; its counts miss what the primary"
        " wrote since, so a clean result there proves little.",
    ),
    Alert(
        "PartkeyPartitionSkew",
        f"max without (source) (partkey_partition_skew_ratio) > {SKEW_RATIO:g}",
        "30m",
        "warning",
        "Rows are unevenly spread across partitions.",
        '{{ $labels.target }} {{ $labels.table }}: the largest partition holds {{ printf "%.2f" $value }}'
        " times the average; hot partitions make their queries, vacuums and index scans slower.",
    ),
    Alert(
        "PartkeyPartitionGrowthOutlier",
        f"(\n  {_GROWTH}\n    > ignoring (partition) group_left ()\n"
        f"  {GROWTH_FACTOR:g} * avg without (partition) ({_GROWTH})\n)\n"
        f"and\n  {_GROWTH} > {GROWTH_MIN_BYTES}",
        "30m",
        "warning",
        "A partition is growing much faster than its siblings.",
        "{{ $labels.target }} {{ $labels.table }}: {{ $labels.partition }} grew by {{ $value | humanize1024 }}B"
        f" in the last hour, more than {GROWTH_FACTOR:g} times the average partition of its table;"
        " it is becoming a hot partition.",
    ),
    Alert(
        "PartkeyDefaultPartitionRows",
        "max without (source) (partkey_default_partition_rows) > 0",
        "15m",
        "warning",
        "Rows are landing in the DEFAULT partition.",
        "{{ $labels.target }} {{ $labels.table }}: the DEFAULT partition holds"
        ' {{ printf "%.0f" $value }} rows; their keys match no listed partition,'
        " so a writer uses the wrong formula or modulus.",
    ),
    Alert(
        "PartkeyInsertLatencyHigh",
        # Alerts compute from raw series, not from recording rules in another group: groups run
        # concurrently, so a recorded input would lag by one evaluation, at random.
        f"{_P99}\n  > {LATENCY_P99_SECONDS:g}",
        "15m",
        "warning",
        "INSERT latency of the probe row is high.",
        "p99 INSERT latency on {{ $labels.target }} {{ $labels.table }} is {{ $value | humanizeDuration }}"
        f" over 5 minutes (threshold {LATENCY_P99_SECONDS * 1000:g}ms).",
    ),
    Alert(
        "PartkeyInsertProbeFailing",
        f"(\n{_FAILURE_RATIO}\n)\n  > {PROBE_FAILURE_RATIO:g}",
        "15m",
        "warning",
        "The insert probe fails often.",
        "{{ $value | humanizePercentage }} of insert probes on {{ $labels.target }} {{ $labels.table }}"
        " failed over 5 minutes; inserts from the application may be failing or waiting on locks too.",
    ),
    Alert(
        "PartkeyNonOptimalImplementation",
        "(partkey_key_implementation_optimal < 1)\n"
        "  * ignoring (implementation) group_left (implementation)\n"
        "(partkey_key_implementation > 0)",
        "1h",
        "info",
        "A table maintains its partition key in a slower way than it could.",
        "{{ $labels.target }} {{ $labels.table }} keeps its key with {{ $labels.implementation }};"
        " partkey-migrate upgrade can switch it to the best method for its PostgreSQL version and shape.",
    ),
)


def prometheus_rules() -> dict[str, Any]:
    """The content of dashboards/alerts.yaml."""
    return {
        "groups": [
            {"name": "partkey.rules", "rules": [r.to_yaml() for r in RECORDING_RULES]},
            {"name": "partkey.alerts", "rules": [a.to_yaml() for a in ALERTS]},
        ]
    }


def critical_alerts() -> tuple[Alert, ...]:
    """The alerts also provisioned as Grafana-managed rules."""
    return tuple(a for a in ALERTS if a.severity == "critical")
