"""Hostile configuration: random YAML never crashes check-config; hostile table and column names stay identifiers."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.app import Exporter
from exporter.cli import main
from exporter.config import parse_config
from tests.support import config_for

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
VALID = {
    "listen": {"address": "127.0.0.1", "port": 19187},
    "log_level": "info",
    "targets": [
        {
            "name": "a",
            "dsn": "host=/tmp dbname=x",
            "lock_timeout": "1s",
            "tables": [
                {
                    "table": "chunks",
                    "modulus": 100,
                    "key_expression": "safe",
                    "checks": {"distribution": {"interval": "1m"}, "insert_probe": {"enabled": False}},
                }
            ],
        }
    ],
}


def _check_config(path: Path) -> tuple[int, list[str], str]:
    """Run `partkey-exporter check-config FILE` in-process: exit code, stderr lines, stdout."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["check-config", str(path)])
    return code, [line for line in err.getvalue().split("\n") if line], out.getvalue()


def _assert_reported(path: Path, text: str) -> None:
    """check-config exits 0 with OK, or 2 with every problem as `file:line[:col]: ...` (file: for env problems)."""
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    code, problems, out = _check_config(path)
    assert code in (0, 2), (code, problems)
    if code == 0:
        assert out.startswith(f"{path}: OK"), out
        return
    assert problems, "exit 2 without saying why"
    # file:line[:column]: ..., or for a missing ${VAR} the dotted path of the value: file: targets[0].dsn: ...
    located = re.compile(rf"^{re.escape(str(path))}:\d+(:\d+)?: ")
    for line in problems:
        assert located.match(line), f"no location in {line!r} for {text!r}"


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(
        [
            "1s",
            "500ms",
            "-1s",
            "0",
            ".inf",
            "nan",
            "1e999",
            "${NOPE}",
            "${HOME}",
            "5m",
            "x" * 70,
            "a\x00b",
            "legacy",
            "safe",
        ]
    ),
)
trees = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(
                [
                    "targets",
                    "tables",
                    "checks",
                    "name",
                    "dsn",
                    "table",
                    "modulus",
                    "interval",
                    "listen",
                    "port",
                    "schema",
                    "enabled",
                    "x",
                ]
            )
            | st.text(max_size=8),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=12,
)


def _mutate(tree: Any, path: list[Any], value: Any) -> Any:
    """A copy of tree with the node at path (as far as it exists) replaced by value."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(tree, dict) and tree:
        key = list(tree)[head % len(tree)]
        return {**tree, key: _mutate(tree[key], rest, value)}
    if isinstance(tree, list) and tree:
        index = head % len(tree)
        return [*tree[:index], _mutate(tree[index], rest, value), *tree[index + 1 :]]
    return value


@SETTINGS
@given(text=st.text(max_size=300))
def test_random_text(tmp_path: Path, text: str) -> None:
    _assert_reported(tmp_path / "random.yaml", text)


@SETTINGS
@given(tree=trees)
def test_random_yaml_documents(tmp_path: Path, tree: Any) -> None:
    _assert_reported(tmp_path / "tree.yaml", yaml.safe_dump(tree, allow_unicode=True))


@SETTINGS
@given(path=st.lists(st.integers(min_value=0, max_value=20), max_size=6), value=trees)
def test_valid_config_with_one_node_replaced(tmp_path: Path, path: list[int], value: Any) -> None:
    _assert_reported(tmp_path / "mutated.yaml", yaml.safe_dump(_mutate(VALID, path, value), allow_unicode=True))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: &a [*a]\ntargets: *a\n", "targets[0]: Input should be a valid dictionary"),
        ("targets: &t\n  - name: a\n    dsn: x\n    tables: *t\n", "tables[0]"),
        (
            "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" if i else 'l0: &l0 ["x"]\n' for i in range(10))
            + "targets: *l9\n",
            "targets[0]: Input should be a valid dictionary",
        ),
        (
            "targets: [{name: a, dsn: 'host=/tmp', tables: [{checks: {distribution: {interval: .inf}}}]}]",
            "interval: Input should be less than or equal to 31622400",
        ),
        (
            "targets: [{name: a, dsn: 'host=/tmp', tables: [{checks: {distribution: {interval: 1.0e+300}}}]}]",
            "interval: Input should be less than or equal to 31622400",
        ),
        ("targets: !!python/object:os.system [echo]", "could not determine a constructor"),
    ],
    ids=[
        "recursive-alias",
        "self-containing-target",
        "billion-laughs",
        "infinite-interval",
        "huge-interval",
        "python-tag",
    ],
)
def test_hostile_yaml_is_refused_with_a_location(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    code, problems, _ = _check_config(path)
    assert code == 2
    assert any(expected in line for line in problems), problems
    _assert_reported(path, text)


def test_every_accepted_interval_can_be_scheduled() -> None:
    """What check-config accepts, the daemon can run: the longest interval still schedules."""
    config = parse_config(
        "targets: [{name: a, dsn: 'host=/tmp dbname=x', tables: [{checks: {distribution: {interval: 366d}}}]}]"
    )
    exporter = Exporter(config)
    try:
        exporter.start()
        assert exporter.scheduler is not None and len(exporter.scheduler.get_jobs()) == len(exporter.runners)
    finally:
        exporter.stop()


HOSTILE_SCHEMA = 'Sch"ema; DROP TABLE canary; --'
HOSTILE_TABLE = "chünks'); DROP TABLE canary;--"
HOSTILE_KEY = 'key"; DELETE FROM canary; --'
HOSTILE_SOURCE = "src'||pg_sleep(5)||'"


def test_hostile_identifiers_are_quoted_not_executed(conn: psycopg.Connection[Any], dsn: str) -> None:
    ident = psycopg.sql.Identifier
    conn.execute("CREATE TABLE canary (x int)")
    conn.execute("INSERT INTO canary VALUES (1), (2)")
    conn.execute(psycopg.sql.SQL("CREATE SCHEMA {}").format(ident(HOSTILE_SCHEMA)))
    table = psycopg.sql.SQL("{}.{}").format(ident(HOSTILE_SCHEMA), ident(HOSTILE_TABLE))
    conn.execute(
        psycopg.sql.SQL(
            "CREATE TABLE {} (id bigint GENERATED BY DEFAULT AS IDENTITY, {} uuid NOT NULL, {} integer NOT NULL, "
            "PRIMARY KEY (id, {})) PARTITION BY LIST ({})"
        ).format(table, ident(HOSTILE_SOURCE), ident(HOSTILE_KEY), ident(HOSTILE_KEY), ident(HOSTILE_KEY))
    )
    for key in range(4):
        part = psycopg.sql.SQL("{}.{}").format(ident(HOSTILE_SCHEMA), ident(f"{HOSTILE_TABLE[:40]}_p{key}"))
        conn.execute(
            psycopg.sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES IN ({})").format(
                part, table, psycopg.sql.Literal(key)
            )
        )
    conn.execute(
        psycopg.sql.SQL(
            "INSERT INTO {} ({}, {}) SELECT c, abs(hashtext(c::text) % 4) "
            "FROM (SELECT md5(g::text)::uuid AS c FROM generate_series(1, 200) g) s"
        ).format(table, ident(HOSTILE_SOURCE), ident(HOSTILE_KEY))
    )
    conn.execute(
        psycopg.sql.SQL("UPDATE {} SET {} = ({} + 1) % 4 WHERE id = 5").format(
            table, ident(HOSTILE_KEY), ident(HOSTILE_KEY)
        )
    )
    conn.execute(psycopg.sql.SQL("ANALYZE {}").format(table))
    before = conn.execute("SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') ORDER BY 1").fetchall()

    def q(text: str) -> str:
        return yaml.safe_dump(text, allow_unicode=True).strip().removesuffix("...").strip()

    settings_yaml = (
        f"schema: {q(HOSTILE_SCHEMA)}\ntable: {q(HOSTILE_TABLE)}\nkey_column: {q(HOSTILE_KEY)}\n"
        f"source_column: {q(HOSTILE_SOURCE)}\nmodulus: 4\nmonotonic_column: id\n"
        "checks:\n  verification_sample: {percent: 100}\n  insert_probe: {enabled: true}"
    )
    config = config_for(dsn, settings_yaml)
    config = config.model_copy(
        update={
            "targets": [
                config.targets[0].model_copy(
                    update={"tables": [config.targets[0].tables[0].model_copy(update={"table": HOSTILE_TABLE})]}
                )
            ]
        }
    )
    exporter = Exporter(config)
    exporter.run_all_once()
    label = f"{HOSTILE_SCHEMA}.{HOSTILE_TABLE}"
    results = {
        check: r for (_, table_label, check), r in exporter.store.current.results.items() if table_label == label
    }
    full = results["verification_full"].payload
    exporter.stop()
    assert len(results) == 7  # every check ran on the hostile names, the probe and incremental included
    assert {c: r.error for c, r in results.items() if not r.success} == {}
    assert full.rows_checked == 200 and full.mismatched == 1
    # Nothing else ran: the canary is whole, no table appeared or vanished, the probe left no row behind.
    assert conn.execute("SELECT count(*) FROM canary").fetchone() == (2,)
    assert conn.execute("SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') ORDER BY 1").fetchall() == before
    assert conn.execute(psycopg.sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone() == (200,)
