"""The status page at /: from the snapshot, escaped, script-free, and sent with a strict Content-Security-Policy."""

from __future__ import annotations

import base64
import hashlib
from html.parser import HTMLParser
from typing import Any

import psycopg
import pytest

from exporter.app import Exporter
from exporter.partition_stats import PartitionRows as P
from exporter.partition_stats import summarize
from exporter.report import TableHealth
from exporter.snapshot import CheckResult
from exporter.statuspage import CSS, render_page
from exporter.verify import BadRow, VerificationResult
from tests.schema import create_list_table, insert_rows
from tests.support import config_for, http, serving

HOSTILE = ("<script>alert(1)</script>", "q\"uo'te&amp;", "\u202eevil\u202c_rtl")


class Page(HTMLParser):
    """Elements by tag with their attributes, and the text outside tags."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.style = ""
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.style += data
        else:
            self.text.append(data)

    def tags(self, tag: str, cls: str | None = None) -> list[dict[str, str | None]]:
        """Attributes of every TAG element, those with class word CLS when given."""
        return [a for t, a in self.elements if t == tag and (cls is None or cls in (a.get("class") or "").split())]


def _parse(body: str) -> Page:
    page = Page()
    page.feed(body)
    return page


def test_hostile_partition_names_render_as_text(conn: psycopg.Connection[Any], dsn: str, admin_dsn: str) -> None:
    create_list_table(conn, modulus=5, trigger=None)
    conn.execute("DROP TABLE chunks_part_02, chunks_part_03, chunks_part_04")
    for key, name in zip((2, 3, 4), HOSTILE, strict=True):
        quoted = name.replace('"', '""')
        conn.execute(f'CREATE TABLE "{quoted}" PARTITION OF chunks FOR VALUES IN ({key})')
    insert_rows(conn, 2000, modulus=5, collections=9)
    conn.execute("ANALYZE chunks")
    exporter = Exporter(config_for(dsn, "modulus: 5"))
    exporter.run_all_once()
    database = conn.info.dbname
    with serving(exporter) as server, psycopg.connect(admin_dsn, autocommit=True) as admin:
        # The page comes from the snapshot alone: with the database refusing every connection it is still whole.
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        try:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )
            status, headers, body = http(server.url + "/")
        finally:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    text = body.decode()
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    page = _parse(text)
    assert page.tags("script") == [] and "<script>" not in text
    visible = "".join(page.text)
    for name in HOSTILE:
        assert name in visible  # shown as the text it is
    bars = page.tags("rect", "bar")
    assert {b["data-partition"] for b in bars} >= set(HOSTILE)  # attribute values round-trip unharmed
    assert len([b for b in bars if b["data-partition"] in HOSTILE]) == 6  # in the rows chart and the bytes chart
    # The right-to-left override is isolated in a <bdi>, so it cannot reorder the text after it.
    assert f"<bdi>{HOSTILE[2]}</bdi>" in text


def test_csp_header_allows_only_the_page_style() -> None:
    health = TableHealth("t1", "public.chunks", True, {})
    page = _parse(render_page([health], {}, 1.8e9))
    assert page.style == CSS  # the one style element is exactly the hashed text
    digest = base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()
    from exporter.statuspage import CSP, HEADERS

    assert f"style-src 'sha256-{digest}'" in CSP and "default-src 'none'" in CSP and "script-src" not in CSP
    assert HEADERS["Content-Security-Policy"] == CSP
    assert all(a.get("style") is None for _, a in page.elements)  # inline style attributes would be blocked
    links = {a["href"] for a in page.tags("a")}
    assert {"/metrics", "/report", "/admin/partition/health", "/openapi.json"} <= links
    assert all(not (h or "").startswith(("http:", "https:", "//")) for h in links)  # nothing external


def _result(check: str, payload: object, success: bool = True, error: str | None = None) -> CheckResult:
    return CheckResult("t1", "public.chunks", check, success, 0.1, 1.8e9 - 5, 1.8e9 - 5, 60.0, error, payload)


def test_verdict_reasons_examples_and_freshness() -> None:
    bad = BadRow("mismatch", "chunks_part_01", {"id": "<b>42</b>", "collection_id": "\u202eabc"}, 3, 7)
    error = BadRow("error", "chunks_part_02", {"id": "43"}, 1, None, error="integer out of range")
    verdict = VerificationResult("full", 1000, 1, 0, 1, examples=(bad, error))
    spread = summarize("estimate", True, [P("chunks_part_00", 100, False), P("chunks_part_01", 300, False)])
    results = {
        "verification_full": _result("verification_full", verdict),
        "distribution": _result("distribution", spread),
        "insert_probe": _result("insert_probe", None, success=False, error="<img src=x onerror=alert(1)>"),
    }
    text = render_page([TableHealth("t1", "public.chunks", True, results)], {}, 1.8e9)
    page = _parse(text)
    assert page.tags("img") == []  # the error text is text, not an element
    visible = "".join(page.text)
    assert "<img src=x onerror=alert(1)>" in visible and "<b>42</b>" in visible
    assert page.tags("span", "verdict")[0]["class"] == "verdict unhealthy"
    assert "full verification found 2 bad rows (1 wrong, 0 NULL, 1 expression errors)" in visible
    assert "check insert_probe is failing" in visible and "integer out of range" in visible
    assert "5 s ago" in visible  # check freshness from the result's last success
    bars = page.tags("rect", "bar")
    assert [b["data-partition"] for b in bars] == ["chunks_part_00", "chunks_part_01"]
    assert [b["data-mark"] for b in bars] == ["cold", "hot"]
    assert len(page.tags("line", "avg")) == 1


@pytest.mark.parametrize("path", ["/", "/?x=1"])
def test_page_without_any_result_yet(dsn: str, path: str) -> None:
    exporter = Exporter(config_for(dsn))
    with serving(exporter) as server:
        status, headers, body = http(server.url + path)
    assert status == 200 and "Content-Security-Policy" in headers
    assert "no distribution yet" in body.decode() and "degraded" in body.decode()
