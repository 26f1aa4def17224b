"""A compact terminal histogram of rows per partition in Unicode blocks, with hot/cold marks and the average."""

from __future__ import annotations

import textwrap
from typing import Literal

from exporter.partition_stats import Distribution, PartitionRows, mark

Order = Literal["partition", "rows"]
EIGHTHS = " ▁▂▃▄▅▆▇█"
HEIGHT = 8  # lines of bars: 64 levels with eighth blocks
GUTTER = 8  # "  9.8k ┤"
MIN_WIDTH = 40
HOT, COLD, UNKNOWN = "▲", "▼", "?"


def _short(value: float) -> str:
    """12345 -> 12.3k: fits the 6-character axis label."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.0f}"


def _column(rows: int | None, top: float) -> list[str]:
    """One partition's bar, top line first, in eighth blocks."""
    if rows is None or top <= 0:
        return [" "] * HEIGHT
    eighths = round(rows / top * HEIGHT * 8)
    cells = []
    for line in range(HEIGHT - 1, -1, -1):
        filled = eighths - line * 8
        cells.append(EIGHTHS[max(0, min(8, filled))])
    return cells


def ordered(spread: Distribution, order: Order) -> list[PartitionRows]:
    """The non-default partitions in partition (name) order, or fullest first."""
    parts = [p for p in spread.partitions if not p.is_default]
    if order == "rows":
        return sorted(parts, key=lambda p: (-1 if p.rows is None else -p.rows, p.name))
    return parts


def render_chart(spread: Distribution, width: int = 80, order: Order = "partition") -> str:
    """Rows per partition as columns, wrapped to WIDTH characters; empty text for a plain table."""
    if not spread.partitioned:
        return ""
    width = max(width, MIN_WIDTH)
    parts = ordered(spread, order)
    top = float(spread.max or 0)
    avg = spread.avg
    per_block = width - GUTTER
    what = "partition order" if order == "partition" else "fullest first"
    average = "unknown" if avg is None else f"{avg:,.0f}"
    legend = f"{HOT} hot >1.2x avg  {COLD} cold <0.8x avg  {UNKNOWN} unknown  ─ avg {average}"
    lines = textwrap.wrap(f"Rows per partition ({spread.source}, {len(parts)} partitions, {what})", width)
    lines += textwrap.wrap(legend, width)
    # The line the average falls on: the bar level whose eighths contain it.
    avg_line = None if avg is None or top <= 0 else min(HEIGHT - 1, int(avg / top * HEIGHT))
    for start in range(0, len(parts), per_block):
        block = parts[start : start + per_block]
        columns = [_column(p.rows, top) for p in block]
        for line in range(HEIGHT):
            level = HEIGHT - 1 - line
            if line == 0:
                label = _short(top)
            elif level == avg_line and avg is not None:
                label = _short(avg)
            else:
                label = ""
            cells = []
            for column in columns:
                cell = column[line]
                cells.append("─" if level == avg_line and cell == " " else cell)
            lines.append(f"{label:>6} {'┼' if level == avg_line else '┤'}" + "".join(cells))
        marks = {"hot": HOT, "cold": COLD, "": " "}
        lines.append(f"{'0':>6} └" + "".join(UNKNOWN if p.rows is None else marks[mark(p.rows, avg)] for p in block))
        ticks = [" "] * len(block)
        for offset in range(0, len(block), 10):
            text = str(start + offset)
            for index, char in enumerate(text):
                if offset + index < len(ticks):
                    ticks[offset + index] = char
        lines.append(" " * GUTTER + "".join(ticks).rstrip())
    lines += textwrap.wrap(_summary(parts, spread), width)
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _summary(parts: list[PartitionRows], spread: Distribution) -> str:
    """Which partitions are the hottest and coldest, by name, since the columns only carry positions."""
    known = [p for p in parts if p.rows is not None]
    if not known or spread.avg is None:
        return "No row counts known yet (never analyzed?)."
    fullest = max(known, key=lambda p: (p.rows or 0, p.name))
    emptiest = min(known, key=lambda p: (p.rows or 0, p.name))
    text = (
        f"fullest {fullest.name} {fullest.rows:,} rows ({(fullest.rows or 0) / spread.avg:.2f}x avg), "
        f"emptiest {emptiest.name} {emptiest.rows:,}; hot {spread.hot}, cold {spread.cold}"
    )
    if spread.default_rows is not None:
        text += f"; DEFAULT partition {spread.default_rows:,} rows (not drawn)"
    return text
