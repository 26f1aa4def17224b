"""The status page in a real browser, on the demo data: the chart matches the report, the CSP blocks nothing."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from exporter.app import Exporter
from exporter.config import parse_config
from exporter.demo import build_demo_database, demo_config_yaml
from exporter.partition_stats import mark
from tests.e2e.browser import headless_chromium
from tests.support import http, serving

pytestmark = pytest.mark.e2e
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "status-page.png"


def test_status_page_chart_matches_the_report(dsn: str, tmp_path: Path) -> None:
    build_demo_database(dsn, rows=30_000)
    exporter = Exporter(parse_config(demo_config_yaml(dsn, 0, fast=True), "<browser>"))
    exporter.run_all_once()
    with serving(exporter) as server, headless_chromium() as browser:
        # The report the page must agree with, from the same snapshot (nothing runs in between).
        status, _, body = http(server.url + "/admin/partition/health")
        assert status == 200
        table = json.loads(body)["tables"][0]
        browser.get(server.url + "/")
        title = browser.title
        bars: list[dict[str, Any]] = browser.execute_script(
            "return Array.from(document.querySelectorAll('svg.chart[data-kind=rows] rect.bar')).map(r => ({"
            "name: r.dataset.partition, mark: r.dataset.mark, height: r.getBBox().height,"
            "shown: r.getBoundingClientRect().height}))"
        )
        # The page's one style element applied under the CSP: hot bars are red, not the SVG default black.
        hot_fill = browser.execute_script("return getComputedStyle(document.querySelector('rect.bar.hot')).fill")
        avg_lines = len(browser.find_elements("css selector", "svg.chart[data-kind=rows] line.avg"))
        verdict = browser.find_element("css selector", "section.table .verdict").text
        section_text = browser.find_element("css selector", "section.table").text
        log = browser.get_log("browser")
        browser.save_screenshot(str(tmp_path / "status-page.png"))
    distribution = table["distribution"]
    partitions = [p for p in distribution["partitions"] if not p["is_default"]]
    assert len(bars) == len(partitions) == 100  # one bar per partition
    assert [b["name"] for b in bars] == [p["name"] for p in partitions]
    fullest = max(partitions, key=lambda p: p["rows"])
    tallest = max(bars, key=lambda b: b["height"])
    assert tallest["name"] == fullest["name"]  # the tallest bar is the partition with the most rows
    assert tallest["shown"] > 50  # and the browser really draws it, at a readable size
    expected = {p["name"]: mark(p["rows"], distribution["avg"]) for p in partitions}
    assert {b["name"]: b["mark"] for b in bars} == expected  # hot/cold marks match the report's rule
    assert sum(m == "hot" for m in expected.values()) == distribution["hot"]
    assert sum(m == "cold" for m in expected.values()) == distribution["cold"]
    assert avg_lines == 1
    assert hot_fill == "rgb(198, 40, 40)"
    assert verdict.lower() == table["status"] == "unhealthy"  # the demo's planted stale keys
    assert title.startswith("partkey-exporter: unhealthy")
    assert f"fullest {fullest['name']}" in section_text
    # A Content-Security-Policy violation (a blocked style or script) is reported on the console.
    assert [entry for entry in log if "Content Security Policy" in entry.get("message", "")] == []
    assert (tmp_path / "status-page.png").stat().st_size > 10_000
    if os.environ.get("PARTKEY_UPDATE_DOCS_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(tmp_path / "status-page.png", DOCS_SCREENSHOT)
