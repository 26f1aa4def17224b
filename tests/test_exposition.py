"""The fast text encoder against prometheus_client, gzip bodies of many members, and bodies never behind the store."""

from __future__ import annotations

import gzip
import platform
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from exporter import exposition as exposition_module
from exporter import gzip_pieces
from exporter.app import Exporter
from exporter.exposition import choose
from exporter.malloc import return_large_blocks
from exporter.textformat import CounterRows, Format, GaugeRows, encode, format_of
from tests.schema import create_list_table, insert_rows
from tests.support import config_for, http, serving

ACCEPTS = [
    "",
    "text/plain;version=0.0.4",
    "text/plain;version=1.0.0;escaping=allow-utf-8",
    "text/plain;version=1.0.0;escaping=values",
    "text/plain;version=1.0.0;escaping=dots",
    "application/openmetrics-text;version=1.0.0",
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8",
    "application/openmetrics-text;version=1.0.0;escaping=dots",
    "application/openmetrics-text;version=2.0.0",
]
HOSTILE = ['quote " here', "back\\slash", "new\nline", 'all\\"\n', "", "ünïcødé ✓", "%s %d {}"]
VALUES = [
    0.0,
    -0.0,
    1.0,
    -1.5,
    1e-9,
    123456.0,
    1234567.0,
    1.7e9 + 0.25,
    2**53,
    float("inf"),
    float("-inf"),
    float("nan"),
]


class Families:
    """A registry stand-in yielding freshly built families on each collect (rows are consumed when read)."""

    def collect(self) -> Iterator[Metric]:
        """Everything the fast path writes, and what it leaves to prometheus_client."""
        rows = GaugeRows("t_rows", 'Help with \\ backslash, "quotes" and\na newline.', ["target", "b", "a"])
        for index, value in enumerate(VALUES):
            rows.add_metric([HOSTILE[index % len(HOSTILE)], str(index), "x"], value)
        yield rows
        yield GaugeRows("t_empty", "No series: HELP and TYPE only.", ["target"])
        unlabelled = GaugeRows("t_unlabelled", "No labels.", [])
        unlabelled.add_metric([], 42.0)
        yield unlabelled
        counter = CounterRows("t_events", "A counter.", ["target"])
        counter.add_metric(["a"], 3.0)
        counter.add_metric(['b"'], float("nan"))
        yield counter
        created = CounterRows("t_created", "A counter with a created timestamp (prometheus_client's path).", ["t"])
        created.add_metric(["a"], 1.0, created=1700000000.0)
        yield created
        stamped = GaugeMetricFamily("t_stamped", "A timestamped sample (prometheus_client's path).", labels=["t"])
        stamped.add_metric(["a"], 1.0, timestamp=1700000000.5)
        yield stamped
        plain = GaugeMetricFamily("t_plain", "prometheus_client's own family class.", labels=["z", "a"])
        plain.add_metric(["1", 'q"'], 2.5)
        yield plain
        histogram = HistogramMetricFamily("t_seconds", "A histogram.", labels=["target"])
        histogram.add_metric(["a\nb"], [("0.005", 1.0), ("0.1", 2.0), ("+Inf", 3.0)], sum_value=0.25)
        yield histogram
        summary = SummaryMetricFamily("t_summary", "A summary.", labels=["target"])
        summary.add_metric(["a"], count_value=2, sum_value=float("inf"))
        yield summary
        unit = GaugeRows("t_size", "With a unit.", ["target"])
        unit.unit = "bytes"
        unit.add_metric(["a"], 1.0)
        yield unit


def written(form: Format, registry: Any) -> bytes:
    """What the fast encoder writes for the registry's families, as one body."""
    body = b"".join(family.header + family.samples for family in encode(registry.collect(), form))
    return body + b"# EOF\n" if form.openmetrics else body


@pytest.mark.parametrize("accept", ACCEPTS)
def test_the_fast_encoder_writes_what_prometheus_client_writes(accept: str) -> None:
    """Byte for byte: escaping of label values and HELP, NaN/Inf/-0.0/exponents, counters, histograms, units."""
    encoder, _ = choose(accept)
    form = format_of(encoder)
    calls: list[int] = []

    def counting(registry: Any) -> bytes:
        calls.append(1)
        return encoder(registry)

    counted = Format(form.openmetrics, form.fast, counting)
    assert written(counted, Families()) == encoder(Families())
    if form.fast:
        # Only the timestamped gauge and, in the classic format (which moves _created into a family of its own),
        # the counter with a created timestamp went through prometheus_client.
        assert len(calls) == (1 if form.openmetrics else 2)
    else:
        assert "dots" in accept or "2.0.0" in accept
        assert len(calls) == 10  # every family: these formats are prometheus_client's alone


def test_rows_families_read_as_prometheus_client_samples() -> None:
    """Whatever reads .samples (the registry, other encoders) sees ordinary Samples, in the order added."""
    rows = GaugeRows("t", "T.", ["b", "a"])
    rows.add_metric(["1", "2"], 3.0)
    rows.add_metric(["4", "5"], 6.0, timestamp=7.0)
    rows.add_metric(["8", "9"], 10.0)
    assert [(s.name, s.labels, s.value, s.timestamp) for s in rows.samples] == [
        ("t", {"b": "1", "a": "2"}, 3.0, None),
        ("t", {"b": "4", "a": "5"}, 6.0, 7.0),
        ("t", {"b": "8", "a": "9"}, 10.0, None),
    ]


@pytest.fixture
def one_target(conn: psycopg.Connection[Any], dsn: str) -> Iterator[Exporter]:
    """One target, every check including the insert probe (its histogram), each run once."""
    create_list_table(conn, modulus=5, trigger=None)
    insert_rows(conn, 200, modulus=5)
    conn.execute("UPDATE chunks SET partition_key = (partition_key + 1) % 5 WHERE id = 7")
    table = "modulus: 5\nmonotonic_column: id\nchecks: {insert_probe: {enabled: true}}"
    exporter = Exporter(config_for(dsn, table, name="only"))
    exporter.run_all_once()
    try:
        yield exporter
    finally:
        exporter.stop()


@pytest.mark.parametrize("accept", ["", "application/openmetrics-text; version=1.0.0"])
def test_a_one_target_body_is_byte_for_byte_the_registry_encoded_by_prometheus_client(
    one_target: Exporter, accept: str
) -> None:
    """With one target the assembled body (global part + the target's fragment) is the whole registry's encoding."""
    body, _ = one_target.render_metrics(accept)
    whole = generate_openmetrics(one_target.registry) if accept else generate_latest(one_target.registry)  # type: ignore[no-untyped-call]
    assert body == whole
    assert b"partkey_insert_probe_duration_seconds_bucket{" in body and b'le="+Inf"' in body
    assert b"partkey_rows_verified_total{" in body
    assert gzip.decompress(one_target.render_metrics(accept, compress=True)[0]) == body


def test_a_gzip_body_of_many_pieces_is_one_member_that_decodes_to_exactly_the_plain_body(
    one_target: Exporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each segment deflated alone, joined into one gzip member: what curl (zlib, first member only) reads too."""
    monkeypatch.setattr(exposition_module, "SEGMENT_TARGETS", 1)
    monkeypatch.setattr(exposition_module, "PIECE_BYTES", 1)
    accept = "application/openmetrics-text; version=1.0.0"
    plain, _ = one_target.render_metrics(accept)
    packed, _ = one_target.render_metrics(accept, compress=True)
    assert one_target.exposition.compressed_pieces > 40  # a piece per family (and '# EOF'), at the least
    single = zlib.decompressobj(wbits=31)  # one member and nothing after it, as zlib-based clients read
    assert single.decompress(packed) == plain and single.eof and single.unused_data == b""
    assert gzip.decompress(packed) == plain
    tool = subprocess.run(["gzip", "-dc"], input=packed, capture_output=True, check=True)
    assert tool.stdout == plain


@pytest.mark.parametrize("sizes", [[0], [1], [5, 0, 7], [1 << 16, 3, 1 << 20], [100] * 50])
def test_crc32_combine_in_python_and_through_zlib(sizes: list[int]) -> None:
    """The trailer's CRC-32 from the pieces' own: both ways equal zlib.crc32 of the whole text."""
    texts = [bytes((index * 7 + offset) % 251 for offset in range(size)) for index, size in enumerate(sizes)]
    for combine in (gzip_pieces._python_crc32_combine, gzip_pieces.crc32_combine):
        crc = 0
        for text in texts:
            crc = combine(crc, zlib.crc32(text), len(text))
        assert crc == zlib.crc32(b"".join(texts))
    body = b"".join(gzip_pieces.member([gzip_pieces.deflate(text) for text in texts]))
    assert gzip.decompress(body) == b"".join(texts)


def test_a_scrape_never_shows_less_than_the_store_has(one_target: Exporter) -> None:
    """A result published while its thread has not yet updated the bodies: the scrape brings them up to date."""
    exporter = one_target
    gzipped = {"Accept-Encoding": "gzip"}
    with serving(exporter) as server:
        before = http(server.url + "/metrics")[2]
        assert gzip.decompress(http(server.url + "/metrics", headers=gzipped)[2]) == before
        probe_before = http(server.url + "/probe?target=only", headers=gzipped)[2]
        # The publishing thread's update is taken away: only the scrape can bring the new result in.
        exporter.store._listeners.clear()
        encoded = exporter.exposition.encoded_fragments
        exporter.runners[("only", "public.chunks", "distribution")].run()
        assert exporter.exposition.encoded_fragments == encoded  # nothing was updated ahead
        latest = exporter.store.latest("only", "public.chunks", "distribution")
        assert latest is not None
        labels = '{check="distribution",table="public.chunks",target="only"}'
        stamp = f"partkey_check_duration_seconds{labels} {latest.duration_seconds!r}\n"
        plain = http(server.url + "/metrics")[2]
        assert stamp.encode() in plain and plain != before
        assert plain == generate_latest(exporter.registry)
        assert gzip.decompress(http(server.url + "/metrics", headers=gzipped)[2]) == plain
        probe = gzip.decompress(http(server.url + "/probe?target=only", headers=gzipped)[2])
        assert stamp.encode() in probe and probe != gzip.decompress(probe_before)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_large_blocks_are_given_back_on_glibc() -> None:
    assert return_large_blocks() is True


def test_a_scrape_waits_for_the_publishing_thread_instead_of_encoding_twice(one_target: Exporter) -> None:
    """While a result's own thread encodes it, a scrape of the newer snapshot waits for it and encodes nothing."""
    exporter, exposition = one_target, one_target.exposition
    exporter.render_metrics("", compress=True)
    exporter.store._listeners.clear()  # this test plays the publishing thread itself
    exporter.runners[("only", "public.chunks", "distribution")].run()
    content_type = choose("")[1]
    generation = exporter.store.current.generations["only"]
    exposition._inflight[("only", content_type)] = generation  # the publisher has started encoding
    encoded = exposition.encoded_fragments
    scraped: list[bytes] = []
    scrape = threading.Thread(target=lambda: scraped.append(exporter.render_metrics("", compress=True)[0]))
    scrape.start()
    deadline = time.monotonic() + 60
    while not exposition._done._waiters:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline and scrape.is_alive(), "the scrape did not wait for the publisher"
        time.sleep(0.01)
    assert exposition.encoded_fragments == encoded
    exposition.refresh("only")
    scrape.join(60)
    assert not scrape.is_alive() and exposition.encoded_fragments == encoded + 1  # the publisher's, only
    assert gzip.decompress(scraped[0]) == generate_latest(exporter.registry)
