"""The terminal histogram: one column per partition at a fixed width, the tallest where the most rows are."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from typing import Any

import psycopg
import pytest

from exporter.chart import COLD, EIGHTHS, GUTTER, HEIGHT, HOT, UNKNOWN, render_chart
from exporter.cli import main
from exporter.partition_stats import Distribution, mark, summarize
from exporter.partition_stats import PartitionRows as P
from tests.schema import create_list_table, no_autovacuum, scalar, until_counted, until_statistics
from tests.support import read_terminal

ROWS = [120, 300, 80, 1000, 0, 310, None, 290, 305, 295, 330, 280]


def _spread() -> Distribution:
    parts = [P(f"t_part_{i:02d}", rows, False) for i, rows in enumerate(ROWS)]
    return summarize("estimate", True, [*parts, P("t_default", 7, True)])


def _blocks(text: str) -> list[list[str]]:
    """Each wrapped block of the chart: its bar lines, then the mark line."""
    lines = text.splitlines()
    blocks, index = [], 0
    while index < len(lines):
        if lines[index][GUTTER - 1 : GUTTER] in {"┤", "┼"} and len(lines[index]) >= GUTTER - 1:
            blocks.append(lines[index : index + HEIGHT + 1])
            index += HEIGHT + 1
        else:
            index += 1
    return blocks


def _columns(block: list[str]) -> list[str]:
    """Every column of one block, top to bottom, bars and then the mark."""
    width = max(len(line) for line in block)
    padded = [line.ljust(width) for line in block]
    return ["".join(line[x] for line in padded) for x in range(GUTTER, width)]


def test_fixed_width_partition_order() -> None:
    spread = _spread()
    text = render_chart(spread, width=GUTTER + 5)  # narrower than the minimum: clamped to 40
    assert all(len(line) <= 40 for line in text.splitlines()), text
    text = render_chart(spread, width=GUTTER + 8)  # below the minimum too
    columns = [c for block in _blocks(text) for c in _columns(block)]
    assert len(columns) == len(ROWS)  # one column per partition, the DEFAULT one left out
    # The tallest column (a full block on the top line) is the partition with the most rows, and only that one.
    assert [i for i, c in enumerate(columns) if c[0] == "█"] == [ROWS.index(1000)]
    marks = {"hot": HOT, "cold": COLD, "": " "}
    expected = [UNKNOWN if rows is None else marks[mark(rows, spread.avg)] for rows in ROWS]
    assert [c[HEIGHT] for c in columns] == expected
    assert expected.count(HOT) == spread.hot and expected.count(COLD) == spread.cold
    assert columns[ROWS.index(0)][:HEIGHT].strip(" ─") == ""  # an empty partition draws no bar, only the average
    assert "fullest t_part_03 1,000 rows" in text and "DEFAULT partition 7 rows (not drawn)" in text


def test_wraps_at_the_width_and_sorts_fullest_first() -> None:
    spread = _spread()
    many = summarize("estimate", True, [P(f"p{i:03d}", (i * 37) % 101, False) for i in range(100)])
    text = render_chart(many, width=50)
    assert all(len(line) <= 50 for line in text.splitlines())
    blocks = _blocks(text)
    assert [len(_columns(b)) for b in blocks] == [42, 42, 16]
    ordered = render_chart(spread, width=60, order="rows")
    heights = [
        sum(EIGHTHS.index(cell) for cell in column[:HEIGHT] if cell in EIGHTHS)
        for column in _columns(_blocks(ordered)[0])
    ]
    assert heights[0] == max(heights) and heights == sorted(heights, reverse=True)
    assert "fullest first" in ordered


def test_plain_table_has_no_chart() -> None:
    assert render_chart(summarize("estimate", False, [P("t", 10, False)])) == ""


def _demo_like(conn: psycopg.Connection[Any]) -> None:
    """Ten partitions, partition 3 four times fuller than the rest, analyzed."""
    create_list_table(conn, modulus=10, trigger=None)
    no_autovacuum(conn)
    conn.execute(
        "INSERT INTO chunks (collection_id, partition_key) "
        "SELECT md5(g::text)::uuid, CASE WHEN g % 13 < 4 THEN 3 ELSE g % 10 END FROM generate_series(1, 3000) g"
    )
    # Two reports are compared line by line: the row counts they read (n_live_tup) must not move in between.
    until_counted(conn, 3000)
    conn.execute("ANALYZE chunks")
    until_statistics(
        lambda: scalar(
            conn,
            "SELECT count(*) FROM pg_stat_user_tables WHERE relname LIKE 'chunks_part_%' AND last_analyze IS NOT NULL",
        ),
        lambda analyzed: analyzed == 10,
    )


def _without_ages(text: str) -> str:
    """The report with its check times and 'Ns ago' ages blanked, so two runs a second apart compare equal."""
    return re.sub(r"\d+s ago", "_s ago", re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", "_ UTC", text))


def test_report_chart_option(
    conn: psycopg.Connection[Any], dsn: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _demo_like(conn)
    monkeypatch.setenv("COLUMNS", "60")
    assert main(["report", "--dsn", dsn, "--modulus", "10"]) == 0
    plain = capsys.readouterr().out
    assert "Rows per partition" not in plain  # not a terminal: the report stays as it was
    assert main(["report", "--dsn", dsn, "--modulus", "10", "--chart"]) == 0
    out = capsys.readouterr().out
    # The chart comes after the report, which is unchanged (but for its check ages: a second may have passed).
    before = _without_ages(plain).splitlines()
    assert _without_ages(out).splitlines()[: len(before)] == before
    chart = "\n".join(out.splitlines()[len(plain.splitlines()) :])
    assert all(len(line) <= 60 for line in chart.splitlines())
    columns = [c for block in _blocks(chart) for c in _columns(block)]
    assert len(columns) == 10 and [i for i, c in enumerate(columns) if c[0] == "█"] == [3]
    assert "fullest chunks_part_03" in chart
    hot_cold = next(line for line in plain.splitlines() if "Hot/Cold Partitions" in line).split(": ")[1]
    assert hot_cold == f"{sum(c[HEIGHT] == HOT for c in columns)}/{sum(c[HEIGHT] == COLD for c in columns)}"


def test_report_in_a_terminal_shows_the_chart(conn: psycopg.Connection[Any], dsn: str) -> None:
    _demo_like(conn)
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "70", "PARTKEY_DSN": dsn}
    with subprocess.Popen(
        [sys.executable, "-m", "exporter.cli", "report", "--modulus", "10"],
        stdout=follower,
        stderr=subprocess.PIPE,
        env=env,
    ) as process:
        os.close(follower)
        received = read_terminal(leader)
        assert process.wait(timeout=60) == 0, process.stderr.read() if process.stderr else ""
    out = received.decode().replace("\r\n", "\n")
    assert "PARTITION KEY IMPLEMENTATION HEALTH REPORT" in out and "Rows per partition (" in out
    chart = out[out.index("Rows per partition") :]
    assert all(len(line) <= 70 for line in chart.splitlines())
    assert "fullest chunks_part_03" in chart
