"""A published result re-writes only the families whose inputs changed; the body stays exactly the registry's."""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from exporter.app import Exporter
from exporter.collector import PartkeyCollector
from exporter.exposition import Fragment, choose
from exporter.snapshot import FrozenSnapshot
from tests.schema import create_list_table, insert_rows, no_autovacuum
from tests.support import config_for

ACCEPTS = ["", "application/openmetrics-text; version=1.0.0"]
# The families the distribution check alone feeds: one series (or three) per partition.
PER_PARTITION = ("partkey_partition_rows", "partkey_partition_bytes", "partkey_partition_dead_rows")
INCREMENTAL = ("only", "public.chunks", "verification_incremental")
DISTRIBUTION = ("only", "public.chunks", "distribution")


@pytest.fixture
def watched(conn: psycopg.Connection[Any], dsn: str) -> Iterator[Exporter]:
    """One target with incremental verification, every check run once, statistics still (no autovacuum)."""
    create_list_table(conn, modulus=5)
    no_autovacuum(conn)
    insert_rows(conn, 200, modulus=5)
    conn.execute("VACUUM ANALYZE chunks")
    exporter = Exporter(config_for(dsn, "modulus: 5\nmonotonic_column: id", name="only"))
    exporter.run_all_once()
    try:
        yield exporter
    finally:
        exporter.stop()


def registry_body(exporter: Exporter, accept: str) -> bytes:
    """The whole registry written by prometheus_client, with no cache of ours involved."""
    if accept:
        return generate_openmetrics(exporter.registry)  # type: ignore[no-untyped-call,no-any-return]
    return generate_latest(exporter.registry)


def fragment(exporter: Exporter, accept: str) -> Fragment:
    """The target's cached fragment for this Accept header."""
    found = exporter.exposition.fragment("only", choose(accept)[1])
    assert found is not None
    return found


def rerun_until_equal(exporter: Exporter, key: tuple[str, str, str]) -> None:
    """Run the check until a run's payload equals the one before (the statistics had settled), within 60 s."""
    deadline = time.monotonic() + 60
    while True:
        before = exporter.store.latest(*key)
        exporter.runners[key].run()
        after = exporter.store.latest(*key)
        assert before is not None and after is not None
        if after.payload == before.payload:
            assert after.payload is not before.payload  # a new object with the same values, as every run makes
            return
        assert time.monotonic() < deadline, "the check's payload kept changing"


@pytest.mark.parametrize("accept", ACCEPTS)
def test_an_incremental_run_rewrites_its_own_series_and_keeps_the_partition_families(
    watched: Exporter, accept: str
) -> None:
    """No new rows: the per-partition families keep their bytes objects; the check's duration line moves."""
    exporter = watched
    exporter.render_metrics(accept)
    exporter.render_metrics(accept, compress=True)
    before = fragment(exporter, accept)
    reused = exporter.exposition.reused_sections
    exporter.runners[INCREMENTAL].run()  # publishes; the exposition listener re-writes the fragment in this thread
    after = fragment(exporter, accept)
    assert after.generation > before.generation
    for name in PER_PARTITION:
        assert after.by_name[name] is before.by_name[name], name
    assert exporter.exposition.reused_sections >= reused + 3  # implementation, distribution, sizes at the least
    latest = exporter.store.latest(*INCREMENTAL)
    assert latest is not None
    labels = '{check="verification_incremental",table="public.chunks",target="only"}'
    assert (
        f"partkey_check_duration_seconds{labels} {latest.duration_seconds!r}\n".encode()
        in after.by_name["partkey_check_duration_seconds"].samples
    )
    body = exporter.render_metrics(accept)[0]
    assert body == registry_body(exporter, accept)
    assert gzip.decompress(exporter.render_metrics(accept, compress=True)[0]) == body


def test_an_equal_distribution_result_keeps_the_families_and_a_changed_one_rewrites_them(
    watched: Exporter, conn: psycopg.Connection[Any]
) -> None:
    """Equal values in a new payload object: the same bytes. New statistics: new text, the registry's exactly."""
    exporter = watched
    exporter.render_metrics("", compress=True)
    rerun_until_equal(exporter, DISTRIBUTION)
    before = fragment(exporter, "")
    reused = exporter.exposition.reused_sections
    rerun_until_equal(exporter, DISTRIBUTION)
    kept = fragment(exporter, "")
    assert exporter.exposition.reused_sections >= reused + 2  # distribution and sizes: compared, not written
    assert kept.generation > before.generation
    for name in PER_PARTITION:
        assert kept.by_name[name] is before.by_name[name], name
    assert exporter.render_metrics("")[0] == registry_body(exporter, "")

    insert_rows(conn, 300, modulus=5)
    conn.execute("ANALYZE chunks")
    deadline = time.monotonic() + 60
    while True:  # until the statistics the check reads show the new rows
        exporter.runners[DISTRIBUTION].run()
        latest = exporter.store.latest(*DISTRIBUTION)
        assert latest is not None
        if latest.payload.total_rows == 500:
            break
        assert time.monotonic() < deadline, f"the estimate stayed at {latest.payload.total_rows} rows"
    changed = fragment(exporter, "")
    assert changed.by_name["partkey_partition_rows"] is not kept.by_name["partkey_partition_rows"]
    assert changed.by_name["partkey_partition_rows"].samples != kept.by_name["partkey_partition_rows"].samples
    body = exporter.render_metrics("")[0]
    assert body == registry_body(exporter, "")
    assert b'partkey_table_rows{source="estimate",table="public.chunks",target="only"} 500.0\n' in body
    assert gzip.decompress(exporter.render_metrics("", compress=True)[0]) == body


def test_the_sections_in_order_are_every_family_of_the_collector(watched: Exporter) -> None:
    """Sections split collect() without leaving out, repeating or reordering a family."""
    snapshot = watched.store.current.for_target("only")
    collector = PartkeyCollector(FrozenSnapshot(snapshot), ["only"], build_info=False)
    by_section = [family.name for section in collector.sections(snapshot) for family in section.families()]
    assert by_section == [family.name for family in collector.collect()]
    names = [section.name for section in collector.sections(snapshot)]
    assert len(names) == len(set(names))
