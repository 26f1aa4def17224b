"""dashboards.queries: every expression found, variables filled in, each one parsed by promtool."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml

from dashboards.queries import NamedQuery, all_queries, substitute
from tests.dashboards.promtool import run_promtool


@pytest.fixture(scope="module")
def queries() -> list[NamedQuery]:
    """All queries for one concrete target and table."""
    return all_queries(target="demo", table="public.chunks")


def test_counts_by_kind(queries: list[NamedQuery]) -> None:
    """Every panel query, variable, recording rule, alert and Grafana-managed alert is listed once."""
    assert Counter(q.kind for q in queries) == {
        "panel": 48,
        "variable": 6,
        "record": 7,
        "alert": 17,
        "grafana-alert": 4,
    }
    assert len(queries) == 82
    assert len({q.name for q in queries}) == len(queries)


def test_no_template_variable_is_left(queries: list[NamedQuery]) -> None:
    """Nothing a Grafana server would have to fill in remains."""
    for q in queries:
        assert "$" not in q.expr, q.name
        assert "$" not in q.datasource_uid, q.name
        assert q.datasource_uid == "partkey-prometheus", q.name


def test_substitution_matches_grafana(queries: list[NamedQuery]) -> None:
    """Regex matchers get the value regex-escaped; equality matchers and durations get it as is."""
    by_name = {q.name: q for q in queries}
    skew = by_name["Partkey / Partition distribution / Skew ratio (max / avg) / A"]
    assert skew.raw == 'partkey_partition_skew_ratio{target=~"$target", table=~"$table", source="$source"}'
    assert skew.expr == (r'partkey_partition_skew_ratio{target=~"demo", table=~"public\\.chunks", source="estimate"}')
    assert skew.instant is False
    growth = by_name["Partkey / Partition distribution / Top 10 partitions by growth (selected range) / A"]
    assert growth.expr.endswith("[1h]))")
    assert growth.instant is True
    table_var = by_name["Partkey / Partition key health / variable $table"]
    assert table_var.raw == 'label_values(partkey_check_success{target=~"$target"}, table)'
    assert table_var.expr == 'partkey_check_success{target=~"demo"}'
    assert by_name["partkey.alerts / PartkeyPartitionSkew"].expr == (
        "max without (source) (partkey_partition_skew_ratio) > 1.5"
    )
    assert by_name["grafana / PartkeyMismatchedRows / A"].expr == (
        'partkey_mismatched_rows{mode!="sample"} or max_over_time(partkey_mismatched_rows{mode="sample"}[1h])'
    )


def test_substitute_rejects_unknown_variables() -> None:
    """A variable with no value is an error, not a silently broken query."""
    with pytest.raises(KeyError, match=r"\$nope"):
        substitute('up{x="$nope"}', {})
    values = {"__rate_interval": "2m", "__range_s": "60"}
    assert substitute("rate(x[$__rate_interval]) $__range_s", values) == "rate(x[2m]) 60"


def test_every_expression_parses_in_promtool(queries: list[NamedQuery], tmp_path: Path) -> None:
    """All substituted expressions, as recording rules, pass `promtool check rules`."""
    rules = [{"record": f"partkey_query_check:q{index}", "expr": q.expr} for index, q in enumerate(queries)]
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "every-query", "rules": rules}]}))
    result = run_promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_a_broken_expression_fails_promtool(tmp_path: Path) -> None:
    """The parse check above can fail."""
    path = tmp_path / "bad.yaml"
    rule = {"record": "x:y", "expr": "rate(x[$t])"}
    path.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [rule]}]}))
    result = run_promtool("check", "rules", path)
    assert result.returncode == 1
