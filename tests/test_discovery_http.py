"""The HTTP side of discovery: the served report (text and JSON) and the status page say what is watched and why."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from typing import Any

import psycopg

from exporter.app import Exporter
from exporter.config import TableConfig, parse_config
from exporter.discovery import DiscoveryResult, Skipped
from exporter.statuspage import render_page
from tests.schema import create_list_table
from tests.support import http, serving
from tests.test_discovery import keyed_tables
from tests.test_monotonic import keyed

CONFIG = """targets:
  - name: t1
    dsn: "{dsn}"
    tables: [auto, {{table: chunks, modulus: 4, monotonic_column: id}}]
    exclude: [ignored]
"""


class DiscoverySections(HTMLParser):
    """Each <section class="discovery">: its target, its heading and paragraph text, and its table rows' cells."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, dict[str, Any]] = {}
        self._current: dict[str, Any] | None = None
        self._cell: list[str] | None = None
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "section" and found.get("class") == "discovery":
            self._current = self.sections[found["data-target"] or ""] = {"text": [], "rows": []}
            self._depth = 1
        elif self._current is not None:
            self._depth += tag == "section"
            if tag in ("h2", "p"):
                self._current["text"].append("\n")  # a block starts: a word boundary
            if tag == "tr":
                self._current["rows"].append([])
            elif tag in ("td", "th"):
                self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if self._current is None:
            return
        if tag in ("td", "th") and self._cell is not None:
            self._current["rows"][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "section":
            self._depth -= 1
            if self._depth == 0:
                self._current = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        elif self._current is not None:
            self._current["text"].append(data)


def discovery_sections(page: str) -> dict[str, dict[str, Any]]:
    """The discovery sections of a status page, by target."""
    parser = DiscoverySections()
    parser.feed(page)
    return parser.sections


def test_the_served_report_and_json_list_discovered_tables_and_why(conn: psycopg.Connection[Any], dsn: str) -> None:
    """GET /admin/partition/health/report (text, JSON), /report and /admin/partition/health carry the discovery."""
    keyed_tables(conn)
    exporter = Exporter(parse_config(CONFIG.format(dsn=dsn), "<test>"))
    try:
        exporter.discover_now()  # discovery only: the reports serve what it found, no check needs to have run
        with serving(exporter) as server:
            url = server.url
            status, headers, body = http(url + "/admin/partition/health/report")
            assert status == 200 and headers["Content-Type"].startswith("text/plain")
            text = body.decode()
            assert text.startswith("t1: discovery ok\n")
            lines = text.splitlines()
            assert lines[1:3] == [
                "  watch public.chunks (key partition_key): configured in tables:",
                "        incremental on id: monotonic_column in tables:",
            ]
            assert (
                "  watch app.docs (key partition_key): discovered, kept by column partition_key "
                "= abs(hashtext(collection_id) % 10)"
            ) in lines
            assert "  skip  public.ignored: excluded by exclude:" in lines
            assert "  skip  public.chunks: configured in tables: (kept by trigger set_partition_key -> " in text
            assert http(url + "/report")[2].decode() == text
            for path in ("/admin/partition/health/report?format=json", "/admin/partition/health"):
                status, _, body = http(url + path)
                assert status == 200
                document = json.loads(body)
                [found] = document["discovery"]
                assert found["target"] == "t1" and found["success"] is True and found["error"] is None
                tables = {t["table"]: t for t in found["tables"]}
                assert sorted(tables) == ["app.checked", "app.docs"]
                assert tables["app.docs"]["source"] == "generated"
                assert tables["app.docs"]["monotonic_column"] == "id"
                assert tables["app.docs"]["incremental"] == (
                    "on id: identity column in the primary key, leads index docs_pkey"
                )
                skipped = {s["table"]: s["reason"] for s in found["skipped"]}
                assert skipped["public.ignored"] == "excluded by exclude:"
                assert skipped["public.routed"].endswith("): no stored key column to verify")
            # One table asked for: that table's health alone; one target: its discovery.
            document = json.loads(http(url + "/admin/partition/health?table=app.docs")[2])
            assert document["discovery"] == [] and [t["table"] for t in document["tables"]] == ["app.docs"]
            assert len(json.loads(http(url + "/admin/partition/health?target=t1")[2])["discovery"]) == 1
            assert http(url + "/admin/partition/health?target=nope")[0] == 404
    finally:
        exporter.stop()


def test_the_status_page_lists_discovered_and_skipped_tables(conn: psycopg.Connection[Any], dsn: str) -> None:
    """The page at / has a section per tables: auto target: watched, configured and skipped tables, each with why."""
    create_list_table(conn, table="ignored", modulus=4)
    keyed(conn, "bare", "ref uuid PRIMARY KEY")
    create_list_table(conn, modulus=4)
    exporter = Exporter(parse_config(CONFIG.format(dsn=dsn), "<test>"))
    try:
        exporter.discover_now()
        with serving(exporter) as server:
            status, headers, body = http(server.url + "/")
    finally:
        exporter.stop()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    sections = discovery_sections(body.decode())
    assert list(sections) == ["t1"]
    text = " ".join("".join(sections["t1"]["text"]).split())
    assert text.startswith("t1: discovered tables discovery ok; last success ")
    rows = sections["t1"]["rows"]
    assert rows[0] == ["table", "", "why", "incremental verification"]
    assert rows[1] == ["public.chunks", "watched", "configured in tables:", "on id: monotonic_column in tables:"]
    assert rows[2] == [
        "public.bare",
        "watched",
        "key partition_key kept by CHECK bare_key_check = abs(hashtext(collection_id) % 10)",
        "off: no identity or serial column in the primary key and no timestamptz column with DEFAULT now(); "
        "set monotonic_column in tables: to turn it on",
    ]
    assert rows[3][:2] == ["public.chunks", "skipped"] and rows[3][2].startswith("configured in tables: (kept by")
    assert rows[4] == ["public.ignored", "skipped", "excluded by exclude:", ""]
    assert len(rows) == 5


def test_a_failed_discovery_shows_its_error_escaped_on_the_page() -> None:
    """A failed discovery: FAILED with the reason, escaped; the tables found last are still listed."""
    failed = DiscoveryResult(
        target="t<1>",
        success=False,
        skipped=(Skipped("public.<b>odd</b>", "excluded by exclude:"),),
        error="lock wait exceeded lock_timeout=1s: <canceling> (SQLSTATE 55P03)",
        last_success_at=None,
    )
    page = render_page([], {}, 1_800_000_000.0, [(failed, [TableConfig(table="chunks")])])
    assert "<b>odd</b>" not in page and "&lt;b&gt;odd&lt;/b&gt;" in page
    sections = discovery_sections(page)
    text = " ".join("".join(sections["t<1>"]["text"]).split())
    assert text == (
        "t<1>: discovered tables discovery FAILED: lock wait exceeded lock_timeout=1s: <canceling> (SQLSTATE 55P03) "
        "(the tables found last stay watched); last success never"
    )
    assert sections["t<1>"]["rows"][1:] == [
        ["public.chunks", "watched", "configured in tables:", "off"],
        ["public.<b>odd</b>", "skipped", "excluded by exclude:", ""],
    ]
