"""The health report in semantik's text layout, its JSON twin, and the healthy/degraded/unhealthy verdict."""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from exporter.formula_report import formula_lines
from exporter.introspect import Implementation
from exporter.partition_stats import Distribution
from exporter.snapshot import CheckResult
from exporter.verify import VerificationResult

Status = Literal["healthy", "degraded", "unhealthy"]
RULE = "=" * 60
VERIFICATION_PREFERENCE = ("verification_full", "verification_sample", "verification_incremental")


@dataclass(frozen=True)
class TableHealth:
    """Everything known about one table, gathered from the latest check results."""

    target: str
    table: str
    target_up: bool
    results: dict[str, CheckResult]

    @property
    def implementation(self) -> Implementation | None:
        """The last detected implementation."""
        result = self.results.get("implementation")
        return result.payload if result and isinstance(result.payload, Implementation) else None

    def verifications(self) -> list[tuple[str, CheckResult, VerificationResult]]:
        """Verification results, broadest mode first."""
        found = []
        for check in VERIFICATION_PREFERENCE:
            result = self.results.get(check)
            if result is not None and isinstance(result.payload, VerificationResult):
                found.append((check, result, result.payload))
        return found

    @property
    def verification(self) -> VerificationResult | None:
        """The broadest verification available (full, then sample, then incremental)."""
        found = self.verifications()
        return found[0][2] if found else None

    @property
    def distribution(self) -> Distribution | None:
        """The freshest distribution, exact or estimated."""
        candidates = [
            r
            for r in (self.results.get("distribution"), self.results.get("distribution_exact"))
            if r is not None and isinstance(r.payload, Distribution)
        ]
        if not candidates:
            return None
        freshest = max(candidates, key=lambda r: r.last_success_at or 0.0)
        payload: Distribution = freshest.payload
        return payload

    @property
    def bad_rows(self) -> int:
        """The largest bad-row count any verification mode reports."""
        return max((v.mismatched + v.null_keys + v.expression_errors for _, _, v in self.verifications()), default=0)

    @property
    def failing_checks(self) -> list[str]:
        """Names of checks whose last run failed."""
        return sorted(name for name, result in self.results.items() if not result.success)

    @property
    def status(self) -> Status:
        """unhealthy: wrong keys or target down; degraded: not optimal, overflow, failing or missing checks."""
        if not self.target_up or self.bad_rows > 0:
            return "unhealthy"
        info = self.implementation
        if info is None or not info.optimal or self.failing_checks or self.verification is None:
            return "degraded"
        if info.formula_drift or info.schema_overflows:
            return "degraded"
        return "healthy"


def _yes(flag: bool) -> str:
    return "YES" if flag else "NO"


def _count(value: int | None) -> str:
    return "unknown" if value is None else f"{value:,}"


def _age(timestamp: float | None, now: float) -> str:
    if timestamp is None:
        return "never"
    when = dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{when}, {max(0.0, now - timestamp):.0f}s ago"


def render_text(health: TableHealth, now: float | None = None) -> str:
    """semantik's report, lines and labels kept, with our additions below its sections."""
    now = time.time() if now is None else now
    info = health.implementation
    verdict = health.verification
    spread = health.distribution
    lines = [RULE, "PARTITION KEY IMPLEMENTATION HEALTH REPORT", RULE, "", "IMPLEMENTATION STATUS:"]
    if info is not None:
        lines += [
            f"  PostgreSQL Version: {info.major}",
            f"  Current Method: {info.method.upper()}",
            f"  Is Optimal: {_yes(info.optimal)}",
        ]
    else:
        lines += ["  PostgreSQL Version: unknown", "  Current Method: UNKNOWN", "  Is Optimal: UNKNOWN"]
    lines += ["", "DATA VERIFICATION:"]
    if verdict is not None:
        incorrect = verdict.mismatched + verdict.null_keys + verdict.expression_errors
        lines += [
            f"  Records Checked: {verdict.rows_checked:,}",
            f"  Correct Keys: {verdict.correct:,}",
            f"  Incorrect Keys: {incorrect:,}",
            f"  Validation: {'PASSED' if incorrect == 0 else 'FAILED'}",
        ]
    else:
        lines += ["  Records Checked: 0", "  Correct Keys: 0", "  Incorrect Keys: 0", "  Validation: NOT RUN"]
    lines += ["", "PERFORMANCE METRICS:"]
    if spread is not None:
        count = spread.partition_count if spread.partitioned else 1
        lines += [
            f"  Total Chunks: {_count(spread.total_rows)}",
            f"  Active Partitions: {spread.active}/{count}",
            f"  Empty Partitions: {spread.empty}",
            f"  Avg Chunks/Partition: {'unknown' if spread.avg is None else f'{spread.avg:,.1f}'}",
            f"  Max Chunks in Partition: {_count(spread.max)}",
            f"  Min Chunks in Partition: {_count(spread.min)}",
        ]
    else:
        lines += ["  Total Chunks: unknown"]
    lines += [
        "",
        "DETAILS:",
        f"  Target: {health.target}",
        f"  Table: {health.table}",
        f"  Status: {health.status.upper()}",
    ]
    if not health.target_up:
        lines.append("  Target Reachable: NO")
    if info is not None:
        shape = info.shape.upper() if info.shape != "plain" else "PLAIN (not partitioned)"
        if info.shape != "plain":
            shape += f", {info.partition_count} partitions, " + (
                "with a DEFAULT partition" if info.has_default_partition else "no DEFAULT partition"
            )
        lines += [f"  PostgreSQL Server: {info.server_version}", f"  Table Shape: {shape}"]
        if info.trigger_location:
            lines.append(f"  Trigger: on the {info.trigger_location}, enabled: {_yes(bool(info.trigger_enabled))}")
        lines += [f"  INT_MIN Overflow in Formula: {_yes(info.formula_overflow)}", f"  Why: {info.reason}"]
        lines += formula_lines(info)
    for _check, result, found in health.verifications():
        lines.append(
            f"  Verification ({found.mode}): {found.rows_checked:,} checked, {found.mismatched:,} wrong, "
            f"{found.null_keys:,} NULL, {found.expression_errors:,} expression errors; "
            f"last success {_age(result.last_success_at, now)}"
        )
        lines += _path_lines(found)
    if spread is not None:
        lines += [
            f"  Row Counts From: {spread.source}",
            f"  Skew Ratio (max/avg): {'unknown' if spread.skew_ratio is None else f'{spread.skew_ratio:.2f}'}",
            f"  Coefficient of Variation: {'unknown' if spread.cv is None else f'{spread.cv:.2f}'}",
            f"  Hot/Cold Partitions (>1.2x / <0.8x avg): {spread.hot}/{spread.cold}",
        ]
        if spread.default_rows is not None:
            lines.append(f"  Default Partition Rows: {spread.default_rows:,}")
        if spread.unknown:
            lines.append(f"  Partitions With Unknown Counts: {spread.unknown} (never analyzed; run ANALYZE)")
    examples = [e for _, _, v in health.verifications() for e in v.examples]
    if examples:
        lines.append("  Example Bad Keys:")
        for example in examples[:10]:
            key = ", ".join(f"{k}={v}" for k, v in example.primary_key.items())
            detail = (
                example.error
                if example.kind == "error"
                else (f"stored {example.stored_key}, expected {example.expected_key}")
            )
            lines.append(f"    - {example.kind} in {example.relation} ({key}): {detail}")
    for name, result in sorted(health.results.items()):
        if result.scan is not None:
            lines.append(f"  Scanned On ({name}): {result.scan.describe()}")
    for name in health.failing_checks:
        lines.append(f"  Failing Check: {name}: {health.results[name].error}")
    lines += ["", RULE]
    return "\n".join(lines) + "\n"


def _path_lines(found: VerificationResult) -> list[str]:
    """Which path the partitions of a full pass took, and why the ones that could not use the loose scan did not
    (known-values: a group-by partition read by the values an earlier pass remembered)."""
    if not found.partitions:
        return []
    paths = Counter(p.plan.path for p in found.partitions)
    lines = ["    Paths: " + ", ".join(f"{count} {path}" for path, count in sorted(paths.items()))]
    if found.rows_estimated:
        lines.append(f"    Rows From Statistics (loose-scanned partitions): {found.rows_estimated:,}")
    reasons = Counter((p.plan.path, p.plan.reason) for p in found.partitions if p.plan.path != "loose-index-scan")
    for (path, reason), count in reasons.most_common(5):
        lines.append(f"    {path} x{count}: {reason}")
    return lines


def render_json(health: TableHealth) -> dict[str, Any]:
    """The same facts as the text report, as a JSON-ready dictionary."""
    info = health.implementation
    verdict = health.verification
    spread = health.distribution
    return {
        "target": health.target,
        "table": health.table,
        "status": health.status,
        "target_up": health.target_up,
        "implementation": info.to_dict() if info else None,
        "verification": verdict.to_dict() if verdict else None,
        "verifications": {v.mode: v.to_dict() for _, _, v in health.verifications()},
        "distribution": spread.to_dict() if spread else None,
        "checks": {
            name: {
                "success": r.success,
                "error": r.error,
                "duration_seconds": r.duration_seconds,
                "last_success_at": r.last_success_at,
                "scan": r.scan.to_dict() if r.scan is not None else None,
            }
            for name, r in sorted(health.results.items())
        },
    }


def overall_status(healths: list[TableHealth]) -> Status:
    """The worst status of all tables."""
    order: list[Status] = ["healthy", "degraded", "unhealthy"]
    return max((h.status for h in healths), key=order.index, default="degraded")
