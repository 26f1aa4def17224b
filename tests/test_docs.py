"""The docs site: generated pages are fresh, the configuration example is valid, metric families are described."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from exporter._docsgen import __main__ as docsgen
from exporter._docsgen import config_page, http_page
from exporter._docsgen.blocks import MissingBlockError, replace_block, start_marker
from exporter.collector import PartkeyCollector
from exporter.config import Config, parse_config
from exporter.snapshot import SnapshotStore

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_generated_page_is_fresh() -> None:
    """`make docs` has been run since the code the pages come from last changed."""
    stale = [str(path.relative_to(DOCS)) for path in docsgen.regenerate()]
    assert stale == [], f"stale generated pages (run `make docs`): {stale}"


def test_a_stale_block_is_found_and_rewritten(tmp_path: Path) -> None:
    """regenerate() notices a hand edit inside a block, and main() writes the fix."""
    for name in docsgen.BLOCKS:
        (tmp_path / name).write_text((DOCS / name).read_text())
    page = tmp_path / "metrics.md"
    page.write_text(page.read_text().replace("| `partkey_up` |", "| `partkey_upp` |"))
    assert list(docsgen.regenerate(tmp_path)) == [page]
    page.write_text(docsgen.regenerate(tmp_path)[page])
    assert docsgen.regenerate(tmp_path) == {}


def test_a_page_without_its_markers_is_an_error() -> None:
    """A page that lost its markers fails loudly instead of silently going stale."""
    with pytest.raises(MissingBlockError, match="generated:metrics start"):
        replace_block("# Metrics\n", "metrics", "body")
    assert replace_block(f"a\n{start_marker('x')}\nold\n<!-- generated:x end -->\nb", "x", "new").splitlines() == [
        "a",
        start_marker("x"),
        "new",
        "<!-- generated:x end -->",
        "b",
    ]


def test_the_configuration_example_is_a_valid_config() -> None:
    """The YAML example on the configuration page parses and keeps the values it shows."""
    text = (DOCS / "configuration.md").read_text()
    example = re.search(r"```yaml\n(.*?)```", text, re.DOTALL)
    assert example is not None
    config = parse_config(example.group(1).replace("${PARTKEY_DB_PASSWORD}", "secret"), "configuration.md")
    table = config.targets[0].tables[0]
    assert (table.modulus, table.monotonic_column, table.checks.verification_full.interval) == (100, "id", 21600)


def test_the_configuration_table_lists_every_key_with_its_real_default() -> None:
    """Nested defaults come from the instance the model really uses, not the base class."""
    rows = {row[0]: row for row in config_page.rows(Config)}
    assert rows["`targets[].tables[].checks.verification_full.interval`"][2] == "`6h`"
    assert rows["`targets[].tables[].checks.insert_probe.enabled`"][2] == "`false`"
    assert rows["`targets[].tables[].schema`"][1:3] == ["string (length ≥ 1, length ≤ 63)", "`public`"]
    assert rows["`targets`"][2] == "`[]`"  # targets_dir may hold every target instead
    assert rows["`targets[].name`"][2] == "required"
    assert all(row[3] for row in rows.values()), [key for key, row in rows.items() if not row[3]]
    assert config_page.duration_text(0.5) == "500ms"


def test_the_http_table_has_every_path_of_the_openapi_document() -> None:
    """Each path and method of exporter/openapi.py has its row, with its shared error responses resolved."""
    text = http_page.render()
    for path in ("/metrics", "/healthz", "/readyz", "/report", "/admin/partition/verify", "/openapi.json"):
        assert f"{path}` |" in text
    assert "`POST /admin/partition/verify`" in text and "409: A verification of that table is already running." in text


def test_describe_returns_every_family_with_its_help() -> None:
    """describe() names each family once, with real help text, and matches what collect() yields."""
    collector = PartkeyCollector(SnapshotStore(), ["t"])
    described = collector.describe()
    assert [f.name for f in described] == [f.name for f in collector.collect()]
    assert all(len(f.documentation) > 10 for f in described)
    assert "partkey_rows_verified" in {f.name for f in described}


def test_a_family_registered_twice_fails_at_registration() -> None:
    """Two collectors exporting the same families are refused when the second registers."""
    registry = CollectorRegistry()
    registry.register(PartkeyCollector(SnapshotStore(), []))
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(PartkeyCollector(SnapshotStore(), []))


def test_a_family_defined_twice_in_the_collector_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """A family the collector yields twice is refused by describe(), so registering fails."""
    original = PartkeyCollector._families

    def doubled(self: PartkeyCollector, snapshot: object) -> object:
        families = list(original(self, snapshot))  # type: ignore[arg-type]
        return iter([*families, families[0]])

    monkeypatch.setattr(PartkeyCollector, "_families", doubled)
    with pytest.raises(ValueError, match="defined twice by PartkeyCollector: partkey_up"):
        CollectorRegistry().register(PartkeyCollector(SnapshotStore(), []))
