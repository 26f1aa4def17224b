"""Dashboard 1: partition key health, the overview."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import statetimeline, table, timeseries
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from dashboards.common import (
    EXPORTER_JOB,
    TARGET,
    TARGET_TABLE,
    background_stat,
    finish,
    name_stat,
    new_dashboard,
    query,
    table_variable,
    target_variable,
    threshold_series,
    thresholds,
    value_text,
    with_panels,
)
from dashboards.rules import CHECK_AGE_RECORD, SCAN_LAG_SECONDS, STALE_INTERVALS

UID = "partkey-overview"

_UP = value_text({"1": ("UP", "green"), "0": ("DOWN", "red")})
_GREEN_RED_ABOVE_0 = thresholds((None, "green"), (1, "red"))


def _health_row(board: db.Dashboard) -> db.Dashboard:
    """Is anything being watched at all: exporter, targets, PostgreSQL version."""
    board = board.with_row(db.Row("Exporter and targets"))
    board = with_panels(
        board,
        finish(
            background_stat(thresholds((None, "red"), (1, "green")), _UP),
            "Exporter up",
            "Prometheus's scrape of the exporter (1 = answered). DOWN: check the exporter process or "
            "container (`partkey-exporter check-config`, its logs, port 19187) and the scrape job "
            f"`{EXPORTER_JOB}` in prometheus.yml. Nothing below is current while it is down.",
            [query(f'up{{job="{EXPORTER_JOB}"}}', "A", "{{instance}}", instant=True)],
            6,
            4,
        ),
        finish(
            background_stat(thresholds((None, "red"), (1, "green")), _UP),
            "Target up",
            "1 when the exporter's connection to the database works. DOWN: the database is unreachable or "
            "refuses the exporter's role; run `partkey-exporter report` for the connection error, then check "
            "the DSN, pg_hba.conf and that the role still has pg_monitor.",
            [query(f"partkey_up{{{TARGET}}}", "A", "{{target}}", instant=True)],
            8,
            4,
        ),
        finish(
            name_stat(),
            "PostgreSQL version",
            "Server version per target; the best key implementation depends on it (generated columns need "
            "PG 12+). Empty: the implementation check has not run yet or the target is down.",
            [query(f"partkey_postgres_version{{{TARGET}}}", "A", "{{target}}: {{version}}", instant=True)],
            6,
            4,
        ),
        finish(
            name_stat(),
            "Exporter version",
            "partkey-exporter build per scrape target. Two versions at once: a rolling upgrade in progress "
            "or a forgotten old instance; metrics and rules may differ between them.",
            [query("partkey_build_info", "A", "{{version}}", instant=True)],
            4,
            4,
        ),
    )
    return board


def _implementation_row(board: db.Dashboard) -> db.Dashboard:
    """How each table maintains its key, and whether that is the best option."""
    board = board.with_row(db.Row("Key implementation"))
    board = with_panels(
        board,
        finish(
            table.Panel()
            .with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
            .with_transformation(
                dm.DataTransformerConfig(
                    id_val="organize",
                    options={
                        "excludeByName": {"Time": True, "Value #A": True, "__name__": True, "job": True},
                        "renameByName": {
                            "Value #B": "optimal",
                            "Value #C": "formula overflow",
                            "Value #D": "trigger enabled",
                        },
                    },
                )
            )
            .mappings(value_text({"1": ("yes", "green"), "0": ("no", "orange")})),
            "Implementation per table",
            "How each table keeps its partition key (trigger, check, generated, expression, hash, none) and "
            "whether that is the best this PostgreSQL version and table shape allow. optimal = no: plan "
            "`partkey-migrate upgrade`. formula overflow = yes: the formula takes abs(hashtext(x)) and "
            "raises on INT_MIN; switch the app and the database to abs(hashtext(x) % N). "
            "trigger enabled = no on a trigger table: nothing sets or checks the key; re-enable it or "
            "`partkey-migrate upgrade`.",
            [
                query(
                    f"partkey_key_implementation{{{TARGET_TABLE}}} == 1", "A", instant=True, fmt=PromQueryFormat.TABLE
                ),
                query(
                    f"partkey_key_implementation_optimal{{{TARGET_TABLE}}}",
                    "B",
                    instant=True,
                    fmt=PromQueryFormat.TABLE,
                ),
                query(f"partkey_key_formula_overflow{{{TARGET_TABLE}}}", "C", instant=True, fmt=PromQueryFormat.TABLE),
                query(f"partkey_key_trigger_enabled{{{TARGET_TABLE}}}", "D", instant=True, fmt=PromQueryFormat.TABLE),
            ],
            16,
            7,
        ),
        finish(
            background_stat(
                thresholds((None, "orange"), (1, "green")),
                value_text({"1": ("optimal", "green"), "0": ("not optimal", "orange")}),
            ),
            "Optimal implementation",
            "1 when the key implementation is the fastest correct one for this table. Not optimal: see "
            "runbook PartkeyNonOptimalImplementation; `partkey-migrate upgrade --dry-run` shows the plan.",
            [query(f"partkey_key_implementation_optimal{{{TARGET_TABLE}}}", "A", "{{target}} {{table}}", instant=True)],
            8,
            7,
        ),
    )
    return board


def _bad_rows_row(board: db.Dashboard) -> db.Dashboard:
    """Wrong, NULL and unevaluable keys over time."""
    board = board.with_row(db.Row("Bad rows"))
    specs = (
        (
            "Wrong keys (mismatched rows)",
            "partkey_mismatched_rows",
            "Rows whose stored key differs from the key expression, per verification mode. Any value above 0 "
            "is critical: queries filtered by partition key miss these rows. Confirm with "
            "`partkey-exporter verify --mode full`, list examples with `partkey-exporter report`, fix with "
            "`partkey-migrate repair`, then find the writer that uses another key formula.",
        ),
        (
            "NULL keys",
            "partkey_null_key_rows",
            "Rows with a NULL partition key. Above 0: a writer bypasses the trigger/default or the column lost "
            "NOT NULL. Confirm with `partkey-exporter verify`, fix with `partkey-migrate repair`.",
        ),
        (
            "Expression-error rows",
            "partkey_expression_error_rows",
            "Rows for which the key expression itself raises (abs() of hashtext() = INT_MIN). Above 0: the "
            "formula overflows; move to abs(hashtext(x) % N) with `partkey-migrate upgrade`.",
        ),
    )
    for title, metric, description in specs:
        board = board.with_panel(
            finish(
                threshold_series(_GREEN_RED_ABOVE_0).decimals(0),
                title,
                description,
                [query(f"{metric}{{{TARGET_TABLE}}}", "A", "{{target}} {{table}} ({{mode}})")],
                8,
                8,
            )
        )
    return board


def _verification_row(board: db.Dashboard) -> db.Dashboard:
    """Which verification modes run, how fresh they are, and whether checks succeed."""
    board = board.with_row(db.Row("Verification and checks"))
    board = with_panels(
        board,
        finish(
            table.Panel().with_transformation(
                dm.DataTransformerConfig(
                    id_val="organize",
                    options={
                        "excludeByName": {"Time": True, "__name__": True, "job": True, "instance": True},
                        "renameByName": {"Value": "rows checked by last run"},
                    },
                )
            ),
            "Verification modes",
            "Which verification modes run per table (incremental every minute, sample, full on a slow "
            "schedule) and how many rows their last run checked. A mode missing here is disabled in the "
            "config; 0 rows for incremental means no new rows since the last watermark.",
            [
                query(
                    f"partkey_verification_rows_checked{{{TARGET_TABLE}}}", "A", instant=True, fmt=PromQueryFormat.TABLE
                )
            ],
            8,
            8,
        ),
        finish(
            background_stat(thresholds((None, "green"), (3600, "yellow"), (86400, "red"))).unit("s"),
            "Time since last successful check",
            "Freshness: seconds since each check last succeeded, so a silent check is visible. Compare with "
            "the check's interval (next panel). Growing: the check fails or times out; see `Check success`, "
            "the exporter log and `partkey-exporter report`.",
            [
                query(
                    f"time() - partkey_check_last_success_timestamp_seconds{{{TARGET_TABLE}}}",
                    "A",
                    "{{table}} {{check}}",
                    instant=True,
                )
            ],
            8,
            8,
        ),
        finish(
            threshold_series(thresholds((None, "green"), (STALE_INTERVALS, "red"))).decimals(1),
            "Staleness (intervals since last success)",
            f"Time since the last success divided by the check's own interval. Above {STALE_INTERVALS}, "
            "PartkeyVerificationStale fires for verification checks: nothing is watching new rows. Look at "
            "the check's errors in `partkey-exporter report` (statement_timeout, lock_timeout, permissions).",
            [query(f"{CHECK_AGE_RECORD}{{{TARGET_TABLE}}}", "A", "{{table}} {{check}}")],
            8,
            8,
        ),
        finish(
            statetimeline.Panel()
            .mappings(value_text({"1": ("ok", "green"), "0": ("failed", "red")}))
            .thresholds(thresholds((None, "red"), (1, "green")))
            .show_value(cm.VisibilityMode.NEVER),
            "Check success",
            "1 when the last run of each check succeeded. Red for longer than a few runs: "
            "`partkey-exporter report` shows the error; timeouts mean the check needs a longer "
            "statement_timeout or an off-peak schedule, permission errors mean the role lacks pg_monitor or "
            "SELECT on the table.",
            [query(f"partkey_check_success{{{TARGET_TABLE}}}", "A", "{{table}} {{check}}")],
            12,
            8,
        ),
        finish(
            timeseries.Panel().unit("s").min(0),
            "Check duration",
            "How long the last run of each check took. Creeping towards the check's statement_timeout: the "
            "table grew or is bloated; run ANALYZE/VACUUM, lower the sample percent, or move the full "
            "verification off-peak.",
            [query(f"partkey_check_duration_seconds{{{TARGET_TABLE}}}", "A", "{{table}} {{check}}")],
            12,
            8,
        ),
        finish(
            timeseries.Panel().unit("rowsps").min(0),
            "Rows verified per second",
            "Verification throughput per mode from partkey_rows_verified_total. Flat at 0 while the app "
            "writes: the incremental watermark is stuck or the check fails; see `Check success`.",
            [
                query(
                    f"sum by (target, table, mode) (rate(partkey_rows_verified_total{{{TARGET_TABLE}}}"
                    "[$__rate_interval]))",
                    "A",
                    "{{table}} ({{mode}})",
                )
            ],
            24,
            7,
        ),
        finish(
            threshold_series(thresholds((None, "green"), (SCAN_LAG_SECONDS, "red"))).unit("s"),
            "Standby replay lag of scans",
            "For checks run on a target's scan_dsn (a hot standby): how far replay was behind the primary when "
            "the scan started, so the result is this much older than it looks. Empty: no target has a "
            f"scan_dsn. Above {SCAN_LAG_SECONDS} s with WAL waiting to be replayed, PartkeyScanReplayLagHigh "
            "fires; it also rises while the primary commits nothing, which is harmless.",
            [query(f"partkey_scan_replay_lag_seconds{{{TARGET_TABLE}}}", "A", "{{table}} {{check}}")],
            24,
            7,
        ),
    )
    return board


def build() -> dm.Dashboard:
    """The overview dashboard model."""
    board = new_dashboard(
        UID,
        "Partkey / Partition key health",
        "Is every partition key right, and is anything checking it? Exporter and target health, key "
        "implementation, wrong/NULL/erroring keys, verification freshness and check health.",
        [target_variable(), table_variable()],
    )
    for add in (_health_row, _implementation_row, _bad_rows_row, _verification_row):
        board = add(board)
    return board.build()
