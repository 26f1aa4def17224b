"""Dashboard 2: partition distribution, the on-call skew view."""

from __future__ import annotations

from grafana_foundation_sdk.builders import bargauge, heatmap, stat, timeseries
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import heatmap as hm

from dashboards.common import (
    TARGET_TABLE,
    colour_scheme,
    finish,
    last_value,
    new_dashboard,
    query,
    scheme_heatmap,
    source_variable,
    table_variable,
    target_variable,
    threshold_series,
    thresholds,
    with_panels,
)
from dashboards.rules import PARTITION_RATIO_RECORD, SKEW_RATIO

UID = "partkey-distribution"

# Row statistics come from either statistics estimates or exact counts; the $source variable picks.
SELECTOR = f'{TARGET_TABLE}, source="$source"'
# Growth needs the frequent series: exact counts arrive hourly, too coarse for a top-N of recent growth.
ESTIMATE = f'{TARGET_TABLE}, source="estimate"'

# semantik's own thresholds: hot above 1.2x the average partition, cold below 0.8x.
_SKEW_STEPS = thresholds((None, "green"), (1.2, "yellow"), (SKEW_RATIO, "red"))


def _stat(
    title: str,
    description: str,
    expr: str,
    steps: db.ThresholdsConfig,
    *,
    unit: str = "short",
    decimals: int = 0,
    no_value: str = "No data",
) -> stat.Panel:
    """A per-table stat panel with a sparkline."""
    return finish(
        stat.Panel()
        .unit(unit)
        .decimals(decimals)
        .thresholds(steps)
        .reduce_options(last_value())
        .no_value(no_value)
        .graph_mode(cm.BigValueGraphMode.AREA)
        .color_mode(cm.BigValueColorMode.VALUE)
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME),
        title,
        description,
        [query(expr, "A", "{{target}} {{table}}")],
        6,
        5,
    )


def _summary_row(board: db.Dashboard) -> db.Dashboard:
    """The numbers on-call looks at first."""
    board = board.with_row(db.Row("Skew summary"))
    panels = (
        _stat(
            "Skew ratio (max / avg)",
            f"Rows in the largest partition divided by the average. Above {SKEW_RATIO:g} for 30 minutes "
            "PartkeyPartitionSkew fires. Find the hot partitions below; if a few collections dominate, the key "
            "is doing its job and the data is skewed; if the estimate disagrees with exact counts, run ANALYZE.",
            f"partkey_partition_skew_ratio{{{SELECTOR}}}",
            _SKEW_STEPS,
            decimals=2,
        ),
        _stat(
            "Skew by bytes (max / avg)",
            "Bytes (heap + indexes + TOAST) in the largest partition divided by the average, beside the row skew. "
            "Higher than the row skew: the big partitions also have bigger rows (TOASTed content) or bloat; check "
            "dead rows below. Sizes come from the catalog's page counts, refreshed by VACUUM and ANALYZE.",
            f"partkey_partition_bytes_skew_ratio{{{TARGET_TABLE}}}",
            _SKEW_STEPS,
            decimals=2,
        ),
        _stat(
            "Coefficient of variation",
            "Standard deviation of rows per partition divided by the mean. Near 0 is an even spread; above "
            "~0.3 several partitions are far from the average, not just one. Check the bar gauge for a pattern.",
            f"partkey_partition_rows_cv{{{SELECTOR}}}",
            thresholds((None, "green"), (0.2, "yellow"), (0.5, "red")),
            decimals=2,
        ),
        _stat(
            "Empty partitions",
            "Partitions with no rows. Many empty partitions on a large table mean keys concentrate on few "
            "values: check the key formula and modulus. With source=estimate, never-analyzed partitions also "
            "look empty; run ANALYZE on the table.",
            f"partkey_partitions_empty{{{SELECTOR}}}",
            thresholds((None, "green"), (1, "yellow")),
        ),
        _stat(
            "Default-partition rows",
            "Rows in the DEFAULT partition: their key matched no listed partition (empty when the table has "
            "no DEFAULT partition; then such inserts fail instead). Above 0 a writer uses a "
            "different formula or modulus. Confirm with `partkey-exporter verify --mode full`, move them with "
            "`partkey-migrate repair`. See runbook PartkeyDefaultPartitionRows.",
            f"partkey_default_partition_rows{{{SELECTOR}}}",
            thresholds((None, "green"), (1, "red")),
            # The exporter emits nothing for a table without a DEFAULT partition; say so instead of "No data".
            no_value="no DEFAULT partition",
        ),
        _stat(
            "Hot partitions (> 1.2x avg)",
            "Partitions holding more than 1.2x the average rows. A few hot partitions: large tenants; their "
            "vacuum and index maintenance cost more. Consider a larger modulus or sub-partitioning.",
            f"partkey_partitions_hot{{{SELECTOR}}}",
            thresholds((None, "green"), (1, "yellow")),
        ),
        _stat(
            "Cold partitions (< 0.8x avg)",
            "Partitions holding less than 0.8x the average rows. Many cold and few hot partitions is the "
            "shape of skew; with source=estimate, stale statistics show as cold: run ANALYZE.",
            f"partkey_partitions_cold{{{SELECTOR}}}",
            thresholds((None, "green"), (1, "yellow")),
        ),
        _stat(
            "Active partitions",
            "Partitions holding at least one row, next to the table's leaf partition count. Far fewer active "
            "than partitions on a table with many distinct keys: keys collapse onto few values; check the "
            "modulus in the app's key formula.",
            f"partkey_partitions_active{{{SELECTOR}}}",
            thresholds((None, "green")),
        ),
        _stat(
            "Partitions without statistics",
            "Partitions whose row estimate is unknown (never analyzed, or statistics reset). Above 0: every "
            "estimate-based number on this dashboard is unreliable; run ANALYZE on the table.",
            f"partkey_partitions_unknown{{{TARGET_TABLE}}}",
            thresholds((None, "green"), (1, "orange")),
        ),
        _stat(
            "Partitions with stale statistics",
            "Partitions never analyzed, or changed by more rows since their last ANALYZE than autovacuum's default "
            "trigger (50 + 10%); includes the ones without statistics. Their row estimates and sizes are old: "
            "ANALYZE them, or find out why autovacuum does not reach them (see the last-analyze panel).",
            f"partkey_partitions_stale_statistics{{{TARGET_TABLE}}}",
            thresholds((None, "green"), (1, "yellow")),
        ),
    )
    return with_panels(board, *panels)


def _partition_bars(unit: str, colour: str) -> bargauge.Panel:
    """Horizontal gradient bars, one per leaf partition, with the unfilled part shown for scale."""
    return (
        bargauge.Panel()
        .unit(unit)
        .min(0)
        .display_mode(cm.BarGaugeDisplayMode.GRADIENT)
        .orientation(cm.VizOrientation.HORIZONTAL)
        .value_mode(cm.BarGaugeValueMode.COLOR)
        .show_unfilled(True)
        .reduce_options(last_value())
        .thresholds(thresholds((None, colour)))
    )


def _top_bars(unit: str) -> bargauge.Panel:
    """Plain horizontal bars for a top-N list."""
    return (
        bargauge.Panel()
        .unit(unit)
        .display_mode(cm.BarGaugeDisplayMode.BASIC)
        .orientation(cm.VizOrientation.HORIZONTAL)
        .reduce_options(last_value())
        .thresholds(thresholds((None, "green")))
    )


def _partitions_row(board: db.Dashboard) -> db.Dashboard:
    """Rows per partition now and over time."""
    board = board.with_row(db.Row("Partitions"))
    board = with_panels(
        board,
        finish(
            _partition_bars("short", "green"),
            "Rows per partition",
            "Current rows per leaf partition, largest first. One bar far longer than the rest is a hot "
            "partition; compare with the Skew ratio. Bars at 0 on a busy table with source=estimate mean "
            "statistics are missing: ANALYZE the partition.",
            [query(f"sort_desc(partkey_partition_rows{{{SELECTOR}}})", "A", "{{partition}}", instant=True)],
            12,
            16,
        ),
        finish(
            _partition_bars("bytes", "blue"),
            "Bytes per partition",
            "Heap + indexes + TOAST per leaf partition, largest first, beside the rows. A partition larger in "
            "bytes than its rows suggest holds bigger rows or bloat. From the catalog's page counts (as of each "
            "partition's last VACUUM or ANALYZE); partitions never measured are missing.",
            [
                query(
                    f"sort_desc(sum without (kind) (partkey_partition_bytes{{{TARGET_TABLE}}}))",
                    "A",
                    "{{partition}}",
                    instant=True,
                )
            ],
            12,
            16,
        ),
        finish(
            scheme_heatmap(colour_scheme("RdYlGn").reverse(True).min(0).max(2).scale(hm.HeatmapColorScale.LINEAR))
            .y_axis(heatmap.YAxisConfig().axis_placement(cm.AxisPlacement.LEFT))
            .cell_values(heatmap.CellValues().decimals(2)),
            "Partition size relative to average over time",
            "Each row of the heatmap is a partition, each cell its rows divided by the table's average "
            "partition (1 = average, green; red = hot, above 1.2x). A red band that widens is a tenant "
            "growing into a hot spot. Needs the recording rules from dashboards/alerts.yaml.",
            [query(f"{PARTITION_RATIO_RECORD}{{{SELECTOR}}}", "A", "{{partition}}")],
            12,
            16,
        ),
    )
    return board


def _growth_row(board: db.Dashboard) -> db.Dashboard:
    """Where rows are being added fastest."""
    board = board.with_row(db.Row("Growth"))
    board = with_panels(
        board,
        finish(
            _top_bars("short"),
            "Top 10 partitions by growth (selected range)",
            "Rows added per partition over the dashboard's time range (statistics estimate). The top bars "
            "are where the next hot spot forms; a negative value is a purge or a repair moving rows away.",
            [
                query(
                    f"topk(10, delta(partkey_partition_rows{{{ESTIMATE}}}[$__range]))",
                    "A",
                    "{{table}} {{partition}}",
                    instant=True,
                )
            ],
            12,
            10,
        ),
        finish(
            timeseries.Panel().unit("short"),
            "Growth rate, top 10 partitions (rows per hour)",
            "Per-hour growth of the fastest-growing partitions, from a linear fit over the last hour. A "
            "single line far above the rest is one tenant loading data; confirm with the Skew ratio.",
            [
                query(
                    f"topk(10, deriv(partkey_partition_rows{{{ESTIMATE}}}[1h]) * 3600)", "A", "{{table}} {{partition}}"
                )
            ],
            12,
            10,
        ),
        finish(
            _top_bars("bytes"),
            "Top 10 partitions by bytes growth (last hour)",
            "Bytes added per partition over the last hour, what PartkeyPartitionGrowthOutlier compares with the "
            "table's average partition. Grows in steps: sizes refresh when VACUUM or ANALYZE visits a partition.",
            [
                query(
                    f"topk(10, sum without (kind) (delta(partkey_partition_bytes{{{TARGET_TABLE}}}[1h])))",
                    "A",
                    "{{table}} {{partition}}",
                    instant=True,
                )
            ],
            12,
            10,
        ),
        finish(
            timeseries.Panel().unit("s").min(0),
            "Time since last analyze, 10 oldest partitions",
            "Age of each partition's statistics (the later of ANALYZE and autoanalyze). A partition far older "
            "than its siblings is one autovacuum does not reach; its estimate and size are as old. Partitions "
            "never analyzed are not drawn: see Partitions with stale statistics.",
            [
                query(
                    f"topk(10, time() - partkey_partition_last_analyze_timestamp_seconds{{{TARGET_TABLE}}})",
                    "A",
                    "{{table}} {{partition}}",
                ),
            ],
            12,
            10,
        ),
        finish(
            timeseries.Panel().unit("short").min(0),
            "Dead rows, top 10 partitions",
            "Dead row versions per partition (n_dead_tup). A partition whose dead rows keep climbing is not being "
            "vacuumed: its bytes grow without its rows, and scans of it slow down.",
            [query(f"topk(10, partkey_partition_dead_rows{{{TARGET_TABLE}}})", "A", "{{table}} {{partition}}")],
            12,
            10,
        ),
        finish(
            threshold_series(_SKEW_STEPS, cm.GraphThresholdsStyleMode.DASHED).decimals(2),
            "Skew ratio and CV over time",
            "Skew ratio and coefficient of variation per table. A step up after a deploy points at a key "
            "formula change; a slow climb points at tenants growing unevenly.",
            [
                query(f"partkey_partition_skew_ratio{{{SELECTOR}}}", "A", "{{table}} skew"),
                query(f"partkey_partition_rows_cv{{{SELECTOR}}}", "B", "{{table}} CV"),
            ],
            12,
            8,
        ),
        finish(
            timeseries.Panel().unit("short").min(0),
            "Table rows",
            "Rows in the whole table. Compare estimate and exact: a large gap means stale statistics, and "
            "every estimate-based panel above is off by as much; run ANALYZE.",
            [query(f"partkey_table_rows{{{TARGET_TABLE}}}", "A", "{{table}} ({{source}})")],
            12,
            8,
        ),
    )
    return board


def build() -> dm.Dashboard:
    """The distribution dashboard model."""
    board = new_dashboard(
        UID,
        "Partkey / Partition distribution",
        "On-call skew view: how rows spread across partitions, which partitions are hot, empty or growing.",
        [target_variable(), table_variable(), source_variable()],
    )
    for add in (_summary_row, _partitions_row, _growth_row):
        board = add(board)
    return board.build()
