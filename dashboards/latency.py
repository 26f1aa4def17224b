"""Dashboard 3: insert latency measured by the probe."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap, stat, timeseries
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import heatmap as hm
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from dashboards.common import (
    TARGET_TABLE,
    colour_scheme,
    finish,
    last_value,
    new_dashboard,
    query,
    scheme_heatmap,
    table_variable,
    target_variable,
    threshold_series,
    thresholds,
    with_panels,
)
from dashboards.rules import (
    FAILURE_RATIO_RECORD,
    LATENCY_P99_SECONDS,
    PROBE_FAILURE_RATIO,
    QUANTILE_RECORD,
)

UID = "partkey-insert-latency"

_BUCKETS = f"partkey_insert_probe_duration_seconds_bucket{{{TARGET_TABLE}}}"


def build() -> dm.Dashboard:
    """The insert-latency dashboard model."""
    board = new_dashboard(
        UID,
        "Partkey / Insert latency",
        "INSERT latency of a synthetic row inserted and rolled back by the exporter, per table: what the "
        "key trigger or CHECK costs each write, and whether writes are stuck behind locks.",
        [target_variable(), table_variable()],
    )
    board = board.with_row(db.Row("Latency"))
    board = with_panels(
        board,
        finish(
            scheme_heatmap(colour_scheme("Oranges").scale(hm.HeatmapColorScale.EXPONENTIAL).exponent(0.5))
            .y_axis(heatmap.YAxisConfig().unit("s"))
            .cell_values(heatmap.CellValues().unit("short")),
            "Probe latency heatmap",
            "Distribution of probe INSERT latency (probes per bucket). A band moving up after a deploy or "
            "migration is a slower key trigger/CHECK: compare implementations with "
            "`partkey-exporter report`. "
            "Isolated dots near the top are lock waits: look for long transactions in pg_stat_activity.",
            [
                query(
                    f"sum by (le) (increase({_BUCKETS}[$__rate_interval]))", "A", "{{le}}", fmt=PromQueryFormat.HEATMAP
                )
            ],
            24,
            9,
        ),
        finish(
            threshold_series(
                thresholds((None, "green"), (LATENCY_P99_SECONDS, "red")), cm.GraphThresholdsStyleMode.DASHED
            ).unit("s"),
            "p50 / p95 / p99 latency",
            "Probe INSERT latency quantiles over 5-minute windows. p99 above "
            f"{LATENCY_P99_SECONDS * 1000:g}ms for 15 minutes fires PartkeyInsertLatencyHigh. p50 high too: "
            "every insert is slow (trigger cost, I/O, bloat; compare with a CHECK-based implementation via "
            "`partkey-migrate upgrade --dry-run`); "
            "only p99 high: lock waits or autovacuum.",
            [
                query(f'{QUANTILE_RECORD}{{{TARGET_TABLE}, quantile="0.5"}}', "A", "{{table}} p50"),
                query(f'{QUANTILE_RECORD}{{{TARGET_TABLE}, quantile="0.95"}}', "B", "{{table}} p95"),
                query(f'{QUANTILE_RECORD}{{{TARGET_TABLE}, quantile="0.99"}}', "C", "{{table}} p99"),
            ],
            16,
            8,
        ),
        finish(
            stat.Panel()
            .unit("s")
            .decimals(4)
            .reduce_options(last_value())
            .thresholds(thresholds((None, "green"), (LATENCY_P99_SECONDS, "red")))
            .graph_mode(cm.BigValueGraphMode.AREA)
            .text_mode(cm.BigValueTextMode.VALUE_AND_NAME),
            "p99 now (live window)",
            "p99 probe latency over the panel's rate interval, computed from the raw histogram (no recording "
            "rule needed). Red: see the runbook entry PartkeyInsertLatencyHigh.",
            [
                query(
                    f"histogram_quantile(0.99, sum by (target, table, le) (rate({_BUCKETS}[$__rate_interval])))",
                    "A",
                    "{{target}} {{table}}",
                )
            ],
            8,
            8,
        ),
    )
    board = board.with_row(db.Row("Probe failures"))
    board = with_panels(
        board,
        finish(
            threshold_series(
                thresholds((None, "green"), (PROBE_FAILURE_RATIO, "red")), cm.GraphThresholdsStyleMode.DASHED
            )
            .unit("percentunit")
            .max(1),
            "Probe failure ratio",
            f"Share of probes that failed over 5 minutes. Above {PROBE_FAILURE_RATIO:.0%} for 15 minutes "
            "fires PartkeyInsertProbeFailing. Failures are lock timeouts (a long transaction or DDL "
            "holds the table), a key CHECK/trigger rejecting the probe row, or a lost INSERT privilege; "
            "`partkey-exporter report` shows the last error.",
            [query(f"{FAILURE_RATIO_RECORD}{{{TARGET_TABLE}}}", "A", "{{target}} {{table}}")],
            12,
            8,
        ),
        finish(
            timeseries.Panel().unit("ops").min(0),
            "Probe failures per second",
            "Raw failure rate of the probe. Any steady rate: see Probe failure ratio. Zero failures and no "
            "latency data at all: the probe is disabled (checks.insert_probe.enabled) or lacks INSERT.",
            [
                query(
                    f"sum by (target, table) (rate(partkey_insert_probe_failures_total{{{TARGET_TABLE}}}"
                    "[$__rate_interval]))",
                    "A",
                    "{{table}} failed",
                ),
                query(
                    f"sum by (target, table) (rate(partkey_insert_probe_duration_seconds_count"
                    f"{{{TARGET_TABLE}}}[$__rate_interval]))",
                    "B",
                    "{{table}} succeeded",
                ),
            ],
            12,
            8,
        ),
    )
    return board.build()
