"""The one custom Collector: turns the latest snapshot into metric families; it never touches the database."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache, cached_property
from typing import Any

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.introspect import Implementation
from exporter.partition_stats import Distribution, finite
from exporter.pg.policy import METHODS
from exporter.snapshot import PROBE_BUCKETS, Snapshot, SnapshotSource
from exporter.textformat import CounterRows as CounterMetricFamily
from exporter.textformat import GaugeRows as GaugeMetricFamily
from exporter.verify import VerificationResult

TT = ["target", "table"]


@dataclass(frozen=True)
class Section:
    """Some consecutive families and what their text is made from: equal inputs write the same text."""

    name: str
    # Makes the values the families are filled from (payloads, counters), compared with ==: the payloads are
    # immutable dataclasses, so an unchanged result is the same object (an identity check) or equal values (the
    # same text; 0.0 and -0.0 compare equal and both mean zero). None: made again every time.
    make_inputs: Callable[[], Any] | None
    families: Callable[[], Iterator[Metric]]

    @cached_property
    def inputs(self) -> Any:
        """The values, made on first use: collect() writes the families without them (filters over every payload)."""
        return None if self.make_inputs is None else self.make_inputs()


class PartkeyCollector(Collector):
    """Yields every partkey_* family from SnapshotStore.current."""

    def __init__(self, store: SnapshotSource, targets: Iterable[str], *, build_info: bool = True) -> None:
        self.store = store
        self.targets = tuple(targets)
        self.build_info = build_info  # off in per-target fragments: the whole body carries it once

    def describe(self) -> list[Metric]:
        """Every family, empty, so the registry refuses a name registered twice; a repeat here raises too."""
        families = list(self._families(Snapshot()))
        names = [family.name for family in families]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"metric family defined twice by PartkeyCollector: {', '.join(repeated)}")
        return families

    def collect(self) -> Iterator[Metric]:
        """Build all families from one snapshot, so a scrape is consistent."""
        yield from self._families(self.store.current)

    def _families(self, snapshot: Snapshot) -> Iterator[Metric]:
        """All families, filled from SNAPSHOT."""
        for section in self.sections(snapshot):
            yield from section.families()

    def sections(self, snapshot: Snapshot) -> list[Section]:
        """The families in body order, in groups, each with the part of SNAPSHOT its text depends on."""
        # Sorted once, on the first section's inputs asked for (the per-target fragments); never on collect().
        results = cache(lambda: sorted(snapshot.results.items()))
        payloads = cache(lambda: [(key, result.payload) for key, result in results()])
        return [
            # Every result's success, duration and timestamps, and the discovery's, move with each run: always made.
            Section("meta", None, lambda: self._meta(snapshot)),
            Section("checks", None, lambda: self._checks(snapshot)),
            Section("discovery", None, lambda: self._discovery(snapshot)),
            Section(
                "implementation",
                lambda: tuple(item for item in payloads() if item[0][2] == "implementation"),
                lambda: self._implementation(snapshot),
            ),
            Section(
                "verification",
                lambda: (
                    tuple(item for item in payloads() if isinstance(item[1], VerificationResult)),
                    tuple(sorted(snapshot.rows_verified.items())),
                ),
                lambda: self._verification(snapshot),
            ),
            Section(
                "distribution",
                lambda: tuple(item for item in payloads() if isinstance(item[1], Distribution)),
                lambda: self._distribution(snapshot),
            ),
            Section(
                "sizes",
                lambda: tuple(
                    item for item in payloads() if item[0][2] == "distribution" and isinstance(item[1], Distribution)
                ),
                lambda: self._sizes(snapshot),
            ),
            Section("probe", lambda: tuple(sorted(snapshot.probe_histograms.items())), lambda: self._probe(snapshot)),
            Section(
                "scan",
                lambda: tuple((key, result.scan) for key, result in results() if result.scan is not None),
                lambda: self._scan(snapshot),
            ),
        ]

    def _meta(self, snapshot: Snapshot) -> Iterator[Metric]:
        """partkey_up, build info and server version."""
        up = GaugeMetricFamily(
            "partkey_up", "1 when the target's connection works, 0 when it cannot be reached.", labels=["target"]
        )
        for target in self.targets:
            up.add_metric([target], 1.0 if snapshot.target_up.get(target) else 0.0)
        yield up
        build = GaugeMetricFamily("partkey_build_info", "Build information; always 1.", labels=["version"])
        if self.build_info:
            build.add_metric([__version__], 1.0)
        yield build
        version = GaugeMetricFamily(
            "partkey_postgres_version",
            "The server's major version (e.g. 18); the version label is the full text (e.g. 18.6).",
            labels=["target", "version"],
        )
        for target, (major, text) in snapshot.target_versions.items():
            version.add_metric([target, text], float(major))
        yield version

    def _checks(self, snapshot: Snapshot) -> Iterator[Metric]:
        """Per-check success, duration, freshness and interval."""
        labels = ["target", "table", "check"]
        success = GaugeMetricFamily(
            "partkey_check_success", "1 when the last run of the check succeeded.", labels=labels
        )
        duration = GaugeMetricFamily(
            "partkey_check_duration_seconds", "How long the last run of the check took.", labels=labels
        )
        last = GaugeMetricFamily(
            "partkey_check_last_success_timestamp_seconds", "Unix time of the check's last success.", labels=labels
        )
        interval = GaugeMetricFamily(
            "partkey_check_interval_seconds", "The check's configured interval (for staleness alerts).", labels=labels
        )
        for (target, table, check), result in sorted(snapshot.results.items()):
            key = [target, table, check]
            success.add_metric(key, 1.0 if result.success else 0.0)
            duration.add_metric(key, result.duration_seconds)
            interval.add_metric(key, result.interval_seconds)
            if result.last_success_at is not None:
                last.add_metric(key, result.last_success_at)
        yield from (success, duration, last, interval)

    def _discovery(self, snapshot: Snapshot) -> Iterator[Metric]:
        """Per `tables: auto` target: did the last discovery work, how many tables it watches, when and how long."""
        success = GaugeMetricFamily(
            "partkey_discovery_success",
            "1 when the last discovery run (tables: auto) succeeded; on failure the last tables found stay watched "
            "and the report says why.",
            labels=["target"],
        )
        tables = GaugeMetricFamily(
            "partkey_discovery_tables", "Tables discovery watches on the target (tables: auto).", labels=["target"]
        )
        duration = GaugeMetricFamily(
            "partkey_discovery_duration_seconds", "How long the last discovery run took.", labels=["target"]
        )
        last = GaugeMetricFamily(
            "partkey_discovery_last_success_timestamp_seconds",
            "Unix time of the last successful discovery run.",
            labels=["target"],
        )
        for target, result in sorted(snapshot.discoveries.items()):
            success.add_metric([target], 1.0 if result.success else 0.0)
            tables.add_metric([target], float(len(result.found)))
            duration.add_metric([target], result.duration_seconds)
            if result.last_success_at is not None:
                last.add_metric([target], result.last_success_at)
        yield from (success, tables, duration, last)

    def _implementation(self, snapshot: Snapshot) -> Iterator[Metric]:
        """The implementation state set and its attributes."""
        impl = GaugeMetricFamily(
            "partkey_key_implementation",
            "How the key is maintained, as a state set: 1 for the current one of " + ", ".join(METHODS) + ".",
            labels=[*TT, "implementation"],
        )
        optimal = GaugeMetricFamily(
            "partkey_key_implementation_optimal",
            "1 when the method is the best this version and table shape allow.",
            labels=TT,
        )
        trigger = GaugeMetricFamily(
            "partkey_key_trigger_enabled",
            "1 when every copy of the key trigger is enabled; only present when a key trigger exists.",
            labels=TT,
        )
        overflow = GaugeMetricFamily(
            "partkey_key_formula_overflow",
            "1 when a key formula takes abs(hashtext(x)), which raises on INT_MIN.",
            labels=TT,
        )
        partitions = GaugeMetricFamily(
            "partkey_table_partitions", "Leaf partitions of the table (0 for a plain table).", labels=TT
        )
        default = GaugeMetricFamily("partkey_table_default_partition", "1 when a DEFAULT partition exists.", labels=TT)
        drift = GaugeMetricFamily(
            "partkey_key_formula_drift",
            "1 when the places holding the key formula (trigger, generated column, CHECK, partition or index "
            "expression, key helper functions, a configured expression) disagree.",
            labels=TT,
        )
        schema_overflows = GaugeMetricFamily(
            "partkey_schema_formula_overflows",
            "Places in the schema (functions, triggers, generated columns, CHECKs, indexes, partition keys, views) "
            "whose formula takes abs(hashtext(x)), which raises on INT_MIN.",
            labels=["target", "schema"],
        )
        schemas_seen: set[tuple[str, str]] = set()
        for (target, table, check), result in sorted(snapshot.results.items()):
            info = result.payload
            if check != "implementation" or not isinstance(info, Implementation):
                continue
            for method in METHODS:
                impl.add_metric([target, table, method], 1.0 if info.method == method else 0.0)
            optimal.add_metric([target, table], float(info.optimal))
            if info.trigger_enabled is not None:
                trigger.add_metric([target, table], float(info.trigger_enabled))
            overflow.add_metric([target, table], float(info.formula_overflow))
            partitions.add_metric([target, table], float(info.partition_count))
            default.add_metric([target, table], float(info.has_default_partition))
            if info.formulas is not None:
                drift.add_metric([target, table], float(info.formula_drift))
            schema = (target, table.split(".", 1)[0])
            if schema not in schemas_seen:
                schemas_seen.add(schema)
                schema_overflows.add_metric(list(schema), float(len(info.schema_overflows)))
        yield from (impl, optimal, trigger, overflow, partitions, default, drift, schema_overflows)

    def _verification(self, snapshot: Snapshot) -> Iterator[Metric]:
        """Bad-row gauges per mode and the rows-verified counter."""
        labels = [*TT, "mode"]
        mismatched = GaugeMetricFamily(
            "partkey_mismatched_rows",
            "Rows whose key differs from the key expression (mode: incremental, sample, full); for incremental, "
            "every bad row found since the start or the last clean full verification.",
            labels=labels,
        )
        nulls = GaugeMetricFamily("partkey_null_key_rows", "Rows with a NULL key.", labels=labels)
        errors = GaugeMetricFamily(
            "partkey_expression_error_rows",
            "Rows whose key expression raises an error (e.g. the INT_MIN overflow).",
            labels=labels,
        )
        checked = GaugeMetricFamily(
            "partkey_verification_rows_checked",
            "Rows the last run of the mode checked (incremental: every run since the start "
            "or the last clean full verification).",
            labels=labels,
        )
        for (target, table, _check), result in sorted(snapshot.results.items()):
            verdict = result.payload
            if not isinstance(verdict, VerificationResult):
                continue
            key = [target, table, verdict.mode]
            mismatched.add_metric(key, float(verdict.mismatched))
            nulls.add_metric(key, float(verdict.null_keys))
            errors.add_metric(key, float(verdict.expression_errors))
            checked.add_metric(key, float(verdict.rows_checked))
        total = CounterMetricFamily("partkey_rows_verified", "Rows checked since the exporter started.", labels=labels)
        for key3, rows in sorted(snapshot.rows_verified.items()):
            total.add_metric(list(key3), float(rows))
        yield from (mismatched, nulls, errors, checked, total)

    def _distribution(self, snapshot: Snapshot) -> Iterator[Metric]:
        """Rows per partition and the skew figures, labelled with their source."""
        labels = [*TT, "source"]
        rows = GaugeMetricFamily(
            "partkey_partition_rows",
            "Rows per partition; source is estimate or exact.",
            labels=[*TT, "partition", "source"],
        )
        gauges = {
            "table_rows": ("partkey_table_rows", "Rows in the whole table."),
            "active": ("partkey_partitions_active", "Partitions with rows."),
            "empty": ("partkey_partitions_empty", "Partitions without rows."),
            "default_rows": ("partkey_default_partition_rows", "Rows in the DEFAULT partition."),
            "avg": ("partkey_partition_rows_avg", "Average rows per partition."),
            "max": ("partkey_partition_rows_max", "Rows in the fullest partition."),
            "min": ("partkey_partition_rows_min", "Rows in the emptiest partition."),
            "skew_ratio": ("partkey_partition_skew_ratio", "Max over average rows per partition."),
            "cv": ("partkey_partition_rows_cv", "Coefficient of variation of rows per partition."),
            "hot": ("partkey_partitions_hot", "Partitions above 1.2x the average."),
            "cold": ("partkey_partitions_cold", "Partitions below 0.8x the average."),
        }
        families = {field: GaugeMetricFamily(name, text, labels=labels) for field, (name, text) in gauges.items()}
        unknown = GaugeMetricFamily(
            "partkey_partitions_unknown",
            "Partitions whose statistics cannot tell their row count (never analyzed, statistics reset).",
            labels=TT,
        )
        for (target, table, _check), result in sorted(snapshot.results.items()):
            spread = result.payload
            if not isinstance(spread, Distribution):
                continue
            key = [target, table, spread.source]
            for partition in spread.partitions:
                if spread.partitioned and partition.rows is not None:
                    rows.add_metric([target, table, partition.name, spread.source], float(partition.rows))
            values = {
                "table_rows": spread.total_rows,
                "default_rows": spread.default_rows,
                "avg": spread.avg,
                "max": spread.max,
                "min": spread.min,
                "skew_ratio": spread.skew_ratio,
                "cv": spread.cv,
            }
            if spread.partitioned:
                values.update(active=spread.active, empty=spread.empty, hot=spread.hot, cold=spread.cold)
            else:
                values = {"table_rows": spread.total_rows}
            for field, value in values.items():
                if value is not None:
                    families[field].add_metric(key, finite(value))
            if spread.source == "estimate":
                unknown.add_metric([target, table], float(spread.unknown))
        yield rows
        yield from families.values()
        yield unknown

    def _sizes(self, snapshot: Snapshot) -> Iterator[Metric]:
        """Bytes, dead rows and upkeep per partition, from the estimate check only: one series per partition."""
        part = [*TT, "partition"]
        partition_bytes = GaugeMetricFamily(
            "partkey_partition_bytes",
            "Bytes per partition from the catalog's page counts (relpages x block size, as of the last VACUUM, "
            "ANALYZE or CREATE INDEX; takes no lock); kind: heap, index or toast (the TOAST table and its index).",
            labels=[*part, "kind"],
        )
        table_bytes = GaugeMetricFamily(
            "partkey_table_bytes",
            "Bytes of the whole table, every leaf summed (DEFAULT included); kind: heap, index or toast.",
            labels=[*TT, "kind"],
        )
        skew = GaugeMetricFamily(
            "partkey_partition_bytes_skew_ratio",
            "Max over average bytes (heap+index+toast) per non-default partition.",
            labels=TT,
        )
        cv = GaugeMetricFamily(
            "partkey_partition_bytes_cv", "Coefficient of variation of bytes per partition.", labels=TT
        )
        dead = GaugeMetricFamily(
            "partkey_partition_dead_rows", "Dead row versions per partition (n_dead_tup).", labels=part
        )
        vacuumed = GaugeMetricFamily(
            "partkey_partition_last_vacuum_timestamp_seconds",
            "Unix time of the partition's last VACUUM or autovacuum.",
            labels=part,
        )
        analyzed = GaugeMetricFamily(
            "partkey_partition_last_analyze_timestamp_seconds",
            "Unix time of the partition's last ANALYZE or autoanalyze.",
            labels=part,
        )
        stale = GaugeMetricFamily(
            "partkey_partitions_stale_statistics",
            "Partitions never analyzed, or changed by more rows since the last ANALYZE than autovacuum's default "
            "trigger (50 + 10%); every partition counted in partkey_partitions_unknown is counted here too.",
            labels=TT,
        )
        for (target, table, check), result in sorted(snapshot.results.items()):
            found = result.payload
            if check != "distribution" or not isinstance(found, Distribution):
                continue
            totals = {"heap": found.heap_bytes, "index": found.index_bytes, "toast": found.toast_bytes}
            for kind, total in totals.items():
                if total is not None:
                    table_bytes.add_metric([target, table, kind], float(total))
            stale.add_metric([target, table], float(found.stale))
            if not found.partitioned:
                continue
            for figure, family in ((found.bytes_skew_ratio, skew), (found.bytes_cv, cv)):
                if figure is not None:
                    family.add_metric([target, table], figure)
            for p in found.partitions:
                key = [target, table, p.name]
                for kind, size in (("heap", p.heap_bytes), ("index", p.index_bytes), ("toast", p.toast_bytes)):
                    if size is not None:
                        partition_bytes.add_metric([*key, kind], float(size))
                if p.dead_rows is not None:
                    dead.add_metric(key, float(p.dead_rows))
                if p.last_vacuum is not None:
                    vacuumed.add_metric(key, p.last_vacuum)
                if p.last_analyze is not None:
                    analyzed.add_metric(key, p.last_analyze)
        yield from (partition_bytes, table_bytes, skew, cv, dead, vacuumed, analyzed, stale)

    def _probe(self, snapshot: Snapshot) -> Iterator[Metric]:
        """The probe latency histogram and its failure counter."""
        histogram = HistogramMetricFamily(
            "partkey_insert_probe_duration_seconds", "INSERT latency of the synthetic, rolled-back row.", labels=TT
        )
        failures = CounterMetricFamily("partkey_insert_probe_failures", "Insert probes that failed.", labels=TT)
        for (target, table), state in sorted(snapshot.probe_histograms.items()):
            buckets = [(str(bound), float(count)) for bound, count in zip(PROBE_BUCKETS, state.buckets, strict=True)]
            buckets.append(("+Inf", float(state.count)))
            histogram.add_metric([target, table], buckets, sum_value=state.total)
            failures.add_metric([target, table], float(state.failures))
        yield histogram
        yield failures

    def _scan(self, snapshot: Snapshot) -> Iterator[Metric]:
        """Where each heavy scan on a scan_dsn ran, and how far the standby's replay was behind when it did."""
        labels = ["target", "table", "check"]
        lag = GaugeMetricFamily(
            "partkey_scan_replay_lag_seconds",
            "For a check run on the target's scan_dsn (a standby): now() - pg_last_xact_replay_timestamp() in the "
            "scan's own transaction, before the scan. Its result includes every transaction the primary committed "
            "up to this long before the scan; an upper bound, as it also grows while the primary commits nothing.",
            labels=labels,
        )
        lag_bytes = GaugeMetricFamily(
            "partkey_scan_replay_lag_bytes",
            "For a check run on the target's scan_dsn: WAL the standby had received but not yet replayed when the "
            "scan started (pg_last_wal_receive_lsn() - pg_last_wal_replay_lsn(); 0 when caught up).",
            labels=labels,
        )
        standby = GaugeMetricFamily(
            "partkey_scan_in_recovery",
            "For a check run on the target's scan_dsn: 1 when that server is a standby (pg_is_in_recovery()), 0 when "
            "it is not (the scan still ran there, and no replay lag is exported).",
            labels=labels,
        )
        for key, result in sorted(snapshot.results.items()):
            source = result.scan
            if source is None:
                continue
            standby.add_metric(list(key), 1.0 if source.in_recovery else 0.0)
            if source.replay_lag_seconds is not None:
                lag.add_metric(list(key), source.replay_lag_seconds)
            if source.replay_lag_bytes is not None:
                lag_bytes.add_metric(list(key), float(source.replay_lag_bytes))
        yield from (lag, lag_bytes, standby)
