"""The metrics table, from the collector's own descriptions (PartkeyCollector.describe)."""

from __future__ import annotations

from exporter._docsgen.tables import table
from exporter.collector import PartkeyCollector
from exporter.config import ChecksConfig
from exporter.snapshot import SnapshotStore

# The exposition adds these suffixes to a family's name.
_SUFFIX = {"counter": "_total"}


def render() -> str:
    """Check names, then one row per metric family."""
    collector = PartkeyCollector(SnapshotStore(), [])
    rows = []
    for family in collector.describe():
        # prometheus_client keeps a family's label names only on this attribute.
        labels = ", ".join(getattr(family, "_labelnames", ()))
        name = family.name + _SUFFIX.get(family.type, "")
        rows.append([f"`{name}`", family.type, labels, family.documentation])
    checks = ", ".join(f"`{name}`" for name in ChecksConfig.model_fields)
    return f"Check names (the `check` label): {checks}.\n\n" + table(["metric", "type", "labels", "meaning"], rows)
