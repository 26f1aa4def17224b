"""Shared pieces of the generated dashboards: datasource, variables, queries and panel defaults."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, Self, TypeVar

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import heatmap as hm
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

# The scrape job the rules, dashboards and prometheus.yml agree on; `up` is the only series not ours.
EXPORTER_JOB = "partkey-exporter"

# Every panel and query points at the dashboard variable, never at a fixed datasource uid,
# so the JSON imports into any Grafana whatever its Prometheus datasource is called.
DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")

# Label matchers every panel query starts from; $target/$table are multi-value, hence =~.
TARGET = 'target=~"$target"'
TARGET_TABLE = 'target=~"$target", table=~"$table"'


class PanelBuilder(Protocol):
    """What every SDK panel builder (stat.Panel, timeseries.Panel, ...) offers; they share no base class."""

    def title(self, title: str) -> Self: ...
    def description(self, description: str) -> Self: ...
    def datasource(self, datasource: dm.DataSourceRef) -> Self: ...
    def span(self, w: int) -> Self: ...
    def height(self, h: int) -> Self: ...
    def with_target(self, target: prometheus.Dataquery) -> Self: ...
    def build(self) -> dm.Panel: ...


P = TypeVar("P", bound=PanelBuilder)


def datasource_variable() -> db.DatasourceVariable:
    """The $datasource variable: any Prometheus datasource."""
    return db.DatasourceVariable("datasource").label("Data source").type("prometheus")


def _label_variable(name: str, label: str, description: str, query: str) -> db.QueryVariable:
    """A multi-select variable over a label's values, refreshed with the time range, sorted, with All."""
    return (
        db.QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
    )


def target_variable() -> db.QueryVariable:
    """The $target variable: targets the exporter reports on."""
    return _label_variable(
        "target", "Target", "Configured target name (a database).", "label_values(partkey_up, target)"
    )


def table_variable() -> db.QueryVariable:
    """The $table variable: watched tables of the selected targets."""
    # partkey_check_success exists for every table as soon as any check ran once.
    return _label_variable(
        "table",
        "Table",
        "Watched table, schema.table.",
        'label_values(partkey_check_success{target=~"$target"}, table)',
    )


def source_variable() -> db.CustomVariable:
    """The $source variable: statistics estimate (every minute) or exact count (hourly)."""
    return (
        db.CustomVariable("source")
        .label("Row source")
        .description("estimate = pg_class/pg_stat statistics, cheap and frequent; exact = count(*), slow.")
        .values("estimate,exact")
        .current(dm.VariableOption(selected=True, text="estimate", value="estimate"))
    )


def query(
    expr: str,
    ref: str,
    legend: str = "",
    *,
    instant: bool = False,
    fmt: PromQueryFormat | None = None,
) -> prometheus.Dataquery:
    """A Prometheus query on $datasource with an explicit refId (the SDK leaves it empty otherwise)."""
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    if legend:
        q = q.legend_format(legend)
    q = q.instant() if instant else q.range()
    if fmt is not None:
        q = q.format(fmt)
    return q


def finish(panel: P, title: str, description: str, queries: Iterable[prometheus.Dataquery], w: int, h: int) -> P:
    """Set the fields every panel must have: title, what-to-do description, datasource, queries, size."""
    panel = panel.title(title).description(description).datasource(DATASOURCE).span(w).height(h)
    for q in queries:
        panel = panel.with_target(q)
    return panel


def with_panels(board: db.Dashboard, *panels: cogbuilder.Builder[dm.Panel]) -> db.Dashboard:
    """The board with the panels added in order."""
    for panel in panels:
        board = board.with_panel(panel)
    return board


def last_value() -> cb.ReduceDataOptions:
    """Reduce each series to its latest value (stat, gauge and bar panels)."""
    return cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False)


def thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    """Absolute thresholds from (value, color) pairs; the first value is None (the base)."""
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=value, color=color) for value, color in steps])
    )


def background_stat(steps: db.ThresholdsConfig, mappings: list[dm.ValueMapping] | None = None) -> stat.Panel:
    """A stat panel filled with its threshold colour, showing value and name: the at-a-glance status tiles."""
    panel = stat.Panel() if mappings is None else stat.Panel().mappings(mappings)
    return (
        panel.thresholds(steps)
        .reduce_options(last_value())
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
    )


def name_stat() -> stat.Panel:
    """An uncoloured stat panel that shows only the series name (a label such as a version)."""
    return (
        stat.Panel()
        .reduce_options(last_value())
        .text_mode(cm.BigValueTextMode.NAME)
        .color_mode(cm.BigValueColorMode.NONE)
    )


def threshold_series(
    steps: db.ThresholdsConfig, style: cm.GraphThresholdsStyleMode = cm.GraphThresholdsStyleMode.LINE
) -> timeseries.Panel:
    """A time series from 0 with its thresholds drawn on the graph."""
    return timeseries.Panel().min(0).thresholds(steps).thresholds_style(cb.GraphThresholdsStyleConfig().mode(style))


def colour_scheme(name: str) -> heatmap.HeatmapColorOptions:
    """Heatmap colours from the named Grafana scheme, in 64 steps."""
    return heatmap.HeatmapColorOptions().mode(hm.HeatmapColorMode.SCHEME).scheme(name).steps(64)


def scheme_heatmap(colours: heatmap.HeatmapColorOptions) -> heatmap.Panel:
    """A heatmap of series already bucketed (nothing calculated), in these colours, no numbers in the cells."""
    return heatmap.Panel().calculate(False).color(colours).show_value(cm.VisibilityMode.NEVER)


def value_text(mapping: dict[str, tuple[str, str]]) -> list[dm.ValueMapping]:
    """Value-to-text mappings, e.g. {'1': ('UP', 'green')}."""
    return [
        dm.ValueMap(
            options={
                value: dm.ValueMappingResult(text=text, color=color, index=index)
                for index, (value, (text, color)) in enumerate(mapping.items())
            }
        )
    ]


def new_dashboard(
    uid: str, title: str, description: str, variables: list[db.QueryVariable | db.CustomVariable]
) -> db.Dashboard:
    """A dashboard with the shared settings and the $datasource variable first."""
    board = (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["partkey", "postgresql"])
        .editable()
        .time("now-6h", "now")
        .refresh("1m")
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .with_variable(datasource_variable())
    )
    for variable in variables:
        board = board.with_variable(variable)
    return board
