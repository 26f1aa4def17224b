"""--measure: full scratch copies, alternated rounds, a ratio with its interval and a verdict; nothing left behind."""

from __future__ import annotations

import json
import re
from typing import Any

import psycopg
import pytest

from exporter.keyspec import KeySpec
from migrations.catalog import table_oid
from migrations.measure import Variant, compare, measure, read_sample
from migrations.measure_copy import Changes, create_copy, read_definition
from migrations.options import Options
from migrations.runner import inspect
from tests.migrations.helpers import catalog, cli, state
from tests.migrations.test_generated_strategy import PLAIN_STEPS, create_plain
from tests.schema import create_list_table, insert_rows, scalar

VERDICT = r"(faster by \d+-\d+%|slower by \d+-\d+%|no difference measurable in \d+ s)"
SLOW_TRIGGER = """CREATE FUNCTION slow_down() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(0.0002); RETURN NEW; END $$"""


def semantik_like(conn: psycopg.Connection[Any], rows: int = 3000) -> None:
    """LIST by key with the parent trigger, an index on the parent, and partitions with indexes of their own."""
    create_list_table(conn, modulus=10, trigger="parent")
    conn.execute("CREATE INDEX chunks_collection_idx ON chunks (collection_id)")
    for key in (0, 3):
        conn.execute(f"CREATE INDEX chunks_part_0{key}_created ON chunks_part_0{key} (created_at, id)")
    insert_rows(conn, rows, modulus=10)


def test_dry_run_measure_prints_medians_ratio_interval_and_verdict_and_changes_nothing(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    semantik_like(conn)
    before = catalog(conn)
    run = cli(dsn, "upgrade", "--dry-run", "--measure", "--measure-seconds", "3")
    assert run.code == 0, run.err
    assert "scratch copies of public.chunks in one rolled-back transaction" in run.out
    assert "before: trigger compute_partition_key() (the table as it is)" in run.out
    assert "after:  CHECK, no trigger" in run.out
    # 10 partitions x (PK + the parent's index) + the two partitions' own indexes.
    assert "22 indexes on its 10 partitions" in run.out and "no foreign keys" in run.out
    assert "include the client round trip" in run.out
    for workload in ("single-row INSERT", "INSERT…SELECT"):
        medians = re.search(
            rf"{re.escape(workload)} \(\d+ rows\), µs per row, median \(min-max\): "
            r"before ([\d.]+) \([\d.]+-[\d.]+\), after ([\d.]+) \([\d.]+-[\d.]+\)\n"
            rf"    after/before x([\d.]+), 95% interval x([\d.]+)-x([\d.]+) \(.*\): {VERDICT}\n",
            run.out,
        )
        assert medians, run.out
        b, a, ratio, low, high = (float(medians.group(i)) for i in range(1, 6))
        assert abs(ratio - a / b) < 0.01 * ratio  # the ratio printed is the ratio of the medians printed
        assert low <= ratio <= high
        verdict = medians.group(6)
        assert verdict.startswith("no difference") == (low <= 1.0 <= high)
    assert catalog(conn) == before
    assert not scalar(conn, "SELECT count(*) FROM pg_class WHERE relname LIKE 'partkey_measure%'")


def test_measure_json_gives_the_same_facts_in_the_one_document(conn: psycopg.Connection[Any], dsn: str) -> None:
    semantik_like(conn, rows=1000)
    run = cli(dsn, "upgrade", "--dry-run", "--measure", "--measure-seconds", "2", "--json")
    assert run.code == 0, run.err
    document = json.loads(run.out)
    assert "dry run: nothing was changed" in document["output"]
    report = document["measure"]
    assert report["after"] == "CHECK, no trigger" and report["budget_seconds"] == 2.0
    assert report["sample_rows"] == 1000 and report["warmup_rounds_discarded"] == 2
    # The session's own setting, the same for both variants, and reported as it is.
    assert report["synchronous_commit"] == scalar(conn, "SHOW synchronous_commit")
    assert "round trip" in report["single_row_includes"]
    assert [w["workload"] for w in report["workloads"]] == ["single-row INSERT", "INSERT…SELECT"]
    for workload in report["workloads"]:
        assert re.fullmatch(VERDICT, workload["verdict"])
        if workload["ratio"] is not None:  # never a ratio without its interval
            low, high = workload["interval"]
            assert low <= workload["ratio"] <= high
            assert workload["before"]["min"] <= workload["before"]["median"] <= workload["before"]["max"]


def test_measure_runs_before_the_upgrade_of_a_plain_table(conn: psycopg.Connection[Any], dsn: str) -> None:
    create_plain(conn, rows=1000)
    run = cli(dsn, "upgrade", "--measure", "--measure-seconds", "1")
    assert run.code == 0, run.err
    assert "after:  STORED generated column, no trigger" in run.out
    assert run.out.index("measure:") < run.out.index("upgrade finished")
    assert state(conn) == ("upgraded", PLAIN_STEPS)
    assert not scalar(conn, "SELECT count(*) FROM pg_class WHERE relname LIKE 'partkey_measure%'")


def test_copies_carry_indexes_checks_defaults_sequences_and_other_triggers_but_no_fk(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    semantik_like(conn, rows=500)
    conn.execute("CREATE TABLE collections (id uuid PRIMARY KEY)")
    conn.execute("INSERT INTO collections SELECT DISTINCT collection_id FROM chunks")
    conn.execute("ALTER TABLE chunks ADD FOREIGN KEY (collection_id) REFERENCES collections")
    conn.execute("CREATE SEQUENCE chunk_numbers")
    conn.execute("ALTER TABLE chunks ADD COLUMN number bigint NOT NULL DEFAULT nextval('chunk_numbers')")
    conn.execute("ALTER TABLE chunks ADD CONSTRAINT content_short CHECK (length(content) < 1000)")
    conn.execute("ALTER TABLE chunks_part_05 ADD CONSTRAINT part_05_recent CHECK (created_at > '2000-01-01')")
    conn.execute(SLOW_TRIGGER.replace("PERFORM pg_sleep(0.0002); ", ""))
    conn.execute("CREATE TRIGGER audit BEFORE INSERT ON chunks FOR EACH ROW EXECUTE FUNCTION slow_down()")
    sequence_before = scalar(conn, "SELECT last_value FROM chunk_numbers")
    options = Options(spec=KeySpec(modulus=10))
    impl = inspect(conn, options)
    definition = read_definition(conn, table_oid(conn, options.spec), {("public", "compute_partition_key")}, 18)
    assert definition.foreign_keys == ["chunks_collection_id_fkey"]

    def shape(table: str) -> list[tuple[str, int, int, int]]:
        """Per leaf: partition bound, indexes, CHECKs and triggers other than clones."""
        rows = conn.execute(
            """SELECT pg_get_expr(c.relpartbound, c.oid),
                      (SELECT count(*) FROM pg_index x WHERE x.indrelid = c.oid),
                      (SELECT count(*) FROM pg_constraint k WHERE k.conrelid = c.oid AND k.contype = 'c'),
                      (SELECT count(*) FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal)
               FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid
               WHERE h.inhparent = %s::regclass ORDER BY 1""",
            (table,),
        ).fetchall()
        return [(str(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in rows]

    with conn.transaction(force_rollback=True):
        create_copy(conn, definition, "copy_all", Changes())
        create_copy(conn, definition, "copy_no_key", Changes(key_triggers=False))
        assert shape("copy_all") == shape("chunks")
        assert [r[3] for r in shape("copy_no_key")] == [1] * 10  # the audit trigger stays, the key trigger went
        assert not scalar(
            conn, "SELECT count(*) FROM pg_constraint WHERE conrelid = 'copy_all'::regclass AND contype = 'f'"
        )
        # The serial column draws from the copy's own sequence.
        assert "copy_all_seq0" in scalar(
            conn,
            "SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = 'copy_all'::regclass AND adnum = 6",
        )
    report = measure(conn, options, impl, "check", seconds=0.5, rows=200, single_rows=20)
    assert "1 foreign key(s) left out: on the copy they would lock the referenced table" in report.copied
    assert "2 CHECKs, 1 other triggers" in report.copied and "2 identity/sequence" in report.copied  # id and number
    assert scalar(conn, "SELECT last_value FROM chunk_numbers") == sequence_before


def test_identical_variants_give_no_difference(conn: psycopg.Connection[Any]) -> None:
    semantik_like(conn, rows=1000)
    options = Options(spec=KeySpec(modulus=10))
    definition, columns, data = read_sample(conn, options, inspect(conn, options), 500)
    same = Variant("as it is", Changes())
    report = compare(conn, options, definition, columns, data, same, same, seconds=3, single_rows=50, seed=1)
    for workload in (report.single, report.bulk):
        assert workload.interval is not None and len(workload.before) >= 6
        assert workload.interval.low <= 1.0 <= workload.interval.high, report.lines()
        assert workload.interval.verdict(report.seconds).startswith("no difference measurable in")


@pytest.mark.timeout(300)
def test_a_trigger_sleeping_200_microseconds_per_row_is_found_slower(conn: psycopg.Connection[Any]) -> None:
    semantik_like(conn, rows=1000)
    conn.execute(SLOW_TRIGGER)
    options = Options(spec=KeySpec(modulus=10))
    definition, columns, data = read_sample(conn, options, inspect(conn, options), 300)

    def slow(conn: psycopg.Connection[Any], name: str) -> None:
        conn.execute(f"CREATE TRIGGER slow BEFORE INSERT ON {name} FOR EACH ROW EXECUTE FUNCTION slow_down()")

    report = compare(
        conn,
        options,
        definition,
        columns,
        data,
        Variant("as it is", Changes()),
        Variant("plus pg_sleep(0.0002) per row", Changes(), slow),
        seconds=60,
        single_rows=30,
        seed=1,
    )
    for workload in (report.single, report.bulk):
        assert workload.interval is not None and workload.interval.low > 1.0, report.lines()
        assert re.fullmatch(r"slower by \d+-\d+%", workload.interval.verdict(report.seconds))
    assert report.seconds < 60  # it stopped as soon as both intervals excluded 1.0, not at the budget


@pytest.mark.versioned("partkey-migrate --measure")
def test_measure_on_this_version_copies_the_trigger_where_it_lives(conn: psycopg.Connection[Any], dsn: str) -> None:
    major = conn.info.server_version // 10000
    # PostgreSQL 11 and 12 cannot put the trigger on the parent: one per partition, which the copy must keep.
    create_list_table(conn, modulus=10, trigger="parent" if major >= 13 else "partitions")
    insert_rows(conn, 1000, modulus=10)
    run = cli(dsn, "upgrade", "--dry-run", "--measure", "--measure-seconds", "1")
    assert run.code == 0, run.err
    assert "before: trigger compute_partition_key() (the table as it is)" in run.out
    assert "after:  CHECK, no trigger" in run.out and "10 indexes on its 10 partitions" in run.out
    assert "0 other triggers" in run.out and len(re.findall(VERDICT, run.out)) == 2
    assert not scalar(conn, "SELECT count(*) FROM pg_class WHERE relname LIKE 'partkey_measure%'")
