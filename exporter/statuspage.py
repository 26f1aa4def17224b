"""The status page at /: HTML from the snapshot alone (no SQL, no script), every name escaped, charts as inline SVG."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from exporter import __version__
from exporter.discovery import TargetDiscovery
from exporter.partition_stats import Distribution, PartitionRows, mark
from exporter.report import TableHealth, overall_status

if TYPE_CHECKING:
    from exporter.app import Exporter

REFRESH_SECONDS = 30
CHART_WIDTH, CHART_HEIGHT, CHART_LEFT, CHART_BOTTOM = 900, 180, 64, 18
LINKS = (
    ("/metrics", "Prometheus metrics"),
    ("/report", "text report"),
    ("/admin/partition/health", "JSON health"),
    ("/openapi.json", "OpenAPI document"),
)

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:960px;
padding:12px 20px;color:#1d1d1f;background:#fafafa}
h1{font-size:20px;margin:8px 0}h2{font-size:17px;margin:0 0 6px}h3{font-size:14px;margin:14px 0 4px}
nav a{margin-right:14px}section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px 16px;
margin:14px 0}table{border-collapse:collapse;margin:4px 0}td,th{border-bottom:1px solid #eee;padding:2px 10px 2px 0;
text-align:left;vertical-align:top}th{font-weight:600}code{font:12px ui-monospace,Menlo,Consolas,monospace;
background:#f2f2f2;padding:1px 3px;border-radius:3px;overflow-wrap:anywhere}
.verdict{display:inline-block;font-weight:700;text-transform:uppercase;padding:1px 8px;border-radius:4px;
color:#fff;margin-left:8px;font-size:13px}.healthy{background:#1a7f37}.degraded{background:#b35900}
.unhealthy{background:#c62828}.muted{color:#666}.ok{color:#1a7f37}.bad{color:#c62828;font-weight:600}
svg{width:100%;height:auto;display:block}svg text{font:11px system-ui,sans-serif;fill:#444}
rect.bar{fill:#8a99a8}rect.bar.hot{fill:#c62828}rect.bar.cold{fill:#1565c0}rect.bar.unknown{fill:none}
line.avg{stroke:#222;stroke-width:1.5;stroke-dasharray:6 4}line.axis{stroke:#999}
.legend span{margin-right:14px}.swatch{display:inline-block;width:10px;height:10px;margin-right:4px}
.swatch.hot{background:#c62828}.swatch.cold{background:#1565c0}.swatch.even{background:#8a99a8}
"""
CSS = _CSS.strip()
# The page's only style is this one element, allowed by its hash: no inline style attributes, no script at all.
CSP = (
    "default-src 'none'; "
    f"style-src 'sha256-{base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()}'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _e(value: object) -> str:
    """Escaped text, isolated from the surrounding text's direction so RTL characters cannot reorder the page."""
    return f"<bdi>{html.escape(str(value), quote=True)}</bdi>"


def _a(value: object) -> str:
    """Escaped for an attribute value."""
    return html.escape(str(value), quote=True)


def _num(value: float | None, digits: int = 0) -> str:
    """1,234 or 1.23; 'unknown' for None."""
    if value is None:
        return "unknown"
    return f"{value:,.{digits}f}"


def _bytes(value: float | None) -> str:
    """A size in B, kB, MB, GB (powers of 1024, as pg_size_pretty)."""
    if value is None:
        return "unknown"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 1024 or unit == "GB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:,.1f} TB"  # unreachable: the loop returns at GB


def _age(timestamp: float | None, now: float) -> str:
    """'12 s ago (2026-11-30 02:00:00 UTC)' or 'never'."""
    if timestamp is None:
        return "never"
    seconds = max(0.0, now - timestamp)
    ago = (
        f"{seconds:.0f} s"
        if seconds < 120
        else f"{seconds / 60:.0f} min"
        if seconds < 7200
        else f"{seconds / 3600:.1f} h"
    )
    when = dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{ago} ago ({when})"


def reasons(health: TableHealth) -> list[str]:
    """Why the verdict is what it is, in the order that matters to on-call."""
    found: list[str] = []
    if not health.target_up:
        found.append("the target's database cannot be reached")
    for _check, _result, verdict in health.verifications():
        bad = verdict.mismatched + verdict.null_keys + verdict.expression_errors
        if bad:
            found.append(
                f"{verdict.mode} verification found {bad:,} bad rows ({verdict.mismatched:,} wrong, "
                f"{verdict.null_keys:,} NULL, {verdict.expression_errors:,} expression errors)"
            )
    info = health.implementation
    if info is None:
        found.append("the implementation has not been detected yet")
    else:
        if not info.optimal:
            found.append(f"not optimal: {info.reason}")
        if info.formula_overflow:
            found.append("the key formula overflows on INT_MIN: abs(hashtext(x)) raises for one id in 2^32")
    for name in health.failing_checks:
        found.append(f"check {name} is failing: {health.results[name].error}")
    if health.verification is None:
        found.append("no verification has finished yet")
    return found or ["every check passed and the keys are correct"]


@dataclass(frozen=True)
class Bar:
    """One partition in a chart."""

    name: str
    value: int | None
    mark: str


def _chart(title: str, bars: list[Bar], avg: float | None, fmt: Callable[[float | None], str], kind: str) -> str:
    """Inline SVG bars, one per partition in partition order, hot/cold coloured, the average as a dashed line."""
    if not bars:
        return ""
    top = max((b.value for b in bars if b.value is not None), default=0) or 1
    plot_w, plot_h = CHART_WIDTH - CHART_LEFT - 4, CHART_HEIGHT - CHART_BOTTOM - 6
    step = plot_w / len(bars)
    gap = 1 if step > 3 else 0
    parts = [
        f'<svg class="chart" data-kind="{kind}" viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" role="img" '
        f'aria-label="{_a(title)}" xmlns="http://www.w3.org/2000/svg">',
        f'<line class="axis" x1="{CHART_LEFT}" y1="6" x2="{CHART_LEFT}" y2="{6 + plot_h}"/>',
        f'<line class="axis" x1="{CHART_LEFT}" y1="{6 + plot_h}" x2="{CHART_WIDTH - 4}" y2="{6 + plot_h}"/>',
        f'<text x="{CHART_LEFT - 4}" y="14" text-anchor="end">{html.escape(fmt(top))}</text>',
        f'<text x="{CHART_LEFT - 4}" y="{6 + plot_h}" text-anchor="end">0</text>',
    ]
    for index, bar in enumerate(bars):
        height = 0.0 if bar.value is None else plot_h * bar.value / top
        x = CHART_LEFT + index * step
        classes = " ".join(c for c in ("bar", bar.mark, "unknown" if bar.value is None else "") if c)
        value = "" if bar.value is None else str(bar.value)
        label = f"{bar.name}: {'unknown' if bar.value is None else fmt(bar.value)}" + (
            f" ({bar.mark})" if bar.mark else ""
        )
        parts.append(
            f'<rect class="{classes}" data-partition="{_a(bar.name)}" data-value="{value}" '
            f'data-mark="{bar.mark}" x="{x:.2f}" y="{6 + plot_h - height:.2f}" width="{max(step - gap, 0.5):.2f}" '
            f'height="{height:.2f}"><title>{html.escape(label)}</title></rect>'
        )
    if avg is not None:
        y = 6 + plot_h - plot_h * avg / top
        parts.append(
            f'<line class="avg" data-value="{avg:.2f}" x1="{CHART_LEFT}" y1="{y:.2f}" x2="{CHART_WIDTH - 4}" '
            f'y2="{y:.2f}"><title>average {html.escape(fmt(avg))}</title></line>'
        )
        parts.append(
            f'<text x="{CHART_WIDTH - 6}" y="{y - 4:.2f}" text-anchor="end">average {html.escape(fmt(avg))}</text>'
        )
    for index in range(0, len(bars), 10):
        x = CHART_LEFT + index * step + step / 2
        parts.append(f'<text x="{x:.1f}" y="{CHART_HEIGHT - 4}" text-anchor="middle">{index}</text>')
    parts.append("</svg>")
    return f"<h3>{html.escape(title)}</h3>" + "".join(parts)


def _charts(spread: Distribution) -> str:
    """Rows per partition, then bytes per partition when the catalog knows them."""
    regular = [p for p in spread.partitions if not p.is_default]
    legend = (
        '<p class="legend"><span><i class="swatch hot"></i>hot: more than 1.2x the average</span>'
        '<span><i class="swatch cold"></i>cold: less than 0.8x the average</span>'
        '<span><i class="swatch even"></i>within</span><span>dashed line: the average</span></p>'
    )
    rows = [Bar(p.name, p.rows, mark(p.rows, spread.avg)) for p in regular]
    out = _chart(
        f"Rows per partition ({spread.source}; {len(regular)} partitions, partition order)",
        rows,
        spread.avg,
        lambda v: _num(v),
        "rows",
    )
    sizes = [Bar(p.name, p.bytes, mark(p.bytes, spread.bytes_avg)) for p in regular]
    if any(b.value is not None for b in sizes):
        out += _chart(
            "Bytes per partition (heap + indexes + TOAST, from the catalog)",
            sizes,
            spread.bytes_avg,
            _bytes,
            "bytes",
        )
    return legend + out + _named(rows, spread)


def _named(bars: list[Bar], spread: Distribution) -> str:
    """The fullest and emptiest partitions and the hot and cold ones by name: the bars only show positions."""
    known = [b for b in bars if b.value is not None]
    if not known or not spread.avg:
        return ""
    fullest = max(known, key=lambda b: (b.value or 0, b.name))
    emptiest = min(known, key=lambda b: (b.value or 0, b.name))
    ratio = (fullest.value or 0) / spread.avg
    items = [
        f"fullest {_e(fullest.name)}: {_num(fullest.value)} rows ({ratio:.2f}x the average)",
        f"emptiest {_e(emptiest.name)}: {_num(emptiest.value)} rows",
    ]
    for kind in ("hot", "cold"):
        names = [b.name for b in bars if b.mark == kind]
        if names:
            shown = ", ".join(_e(n) for n in names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
            items.append(f"{kind} ({len(names)}): {shown}")
    unknown = [b.name for b in bars if b.value is None]
    if unknown:
        items.append(f"unknown, never analyzed ({len(unknown)}): " + ", ".join(_e(n) for n in unknown[:20]))
    return "<ul class='named'>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>"


def _rows(cells: Iterable[Iterable[str]]) -> str:
    """Table rows from already-escaped cells."""
    return "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in cells)


def _distribution(spread: Distribution) -> str:
    """The skew figures by rows and bytes, and the charts."""
    figures = [
        ("Rows from", _e(spread.source)),
        ("Total rows", _num(spread.total_rows)),
        ("Partitions", f"{spread.partition_count:,} ({spread.active:,} with rows, {spread.empty:,} empty)"),
        ("Average / max / min rows", f"{_num(spread.avg, 1)} / {_num(spread.max)} / {_num(spread.min)}"),
        (
            "Skew by rows (max/avg, CV)",
            f"{_num(spread.skew_ratio, 2)}, {_num(spread.cv, 2)}; hot {spread.hot}, cold {spread.cold}",
        ),
        (
            "Bytes heap / indexes / TOAST",
            f"{_bytes(spread.heap_bytes)} / {_bytes(spread.index_bytes)} / {_bytes(spread.toast_bytes)}",
        ),
        ("Skew by bytes (max/avg, CV)", f"{_num(spread.bytes_skew_ratio, 2)}, {_num(spread.bytes_cv, 2)}"),
        ("Statistics stale / unknown", f"{spread.stale} / {spread.unknown} partitions"),
    ]
    if spread.default_rows is not None:
        figures.append(("DEFAULT partition rows", _num(spread.default_rows)))
    table = "<table>" + _rows((f"<th>{k}</th>", v) for k, v in figures) + "</table>"
    return "<h3>Distribution</h3>" + table + (_charts(spread) if spread.partitioned else "")


def _implementation(health: TableHealth, expected: str | None) -> str:
    """Method, optimality, why, and the formulas in use and expected."""
    info = health.implementation
    if info is None:
        return "<h3>Implementation</h3><p class='muted'>not detected yet</p>"
    in_use = [f"trigger {_e(t.name)} on {_e(t.relation)} calls {_e(t.function)}" for t in info.triggers]
    in_use += [f"CHECK {_e(c.name)}: <code>{_e(c.definition)}</code>" for c in info.checks]
    if info.generated_expression:
        in_use.append(f"generated ({_e(info.generated_kind)}): <code>{_e(info.generated_expression)}</code>")
    if info.partition_key:
        in_use.append(f"partition key: <code>{_e(info.partition_key)}</code>")
    rows = [
        ("<th>Method</th>", f"{_e(info.method)} ({'optimal' if info.optimal else 'not optimal'})"),
        ("<th>Why</th>", _e(info.reason)),
        ("<th>PostgreSQL</th>", _e(info.server_version)),
        ("<th>Formula in use</th>", "<br>".join(in_use) or "none found"),
    ]
    if expected is not None:
        rows.append(("<th>Expected formula</th>", f"<code>{_e(expected)}</code>"))
    rows.append(("<th>INT_MIN overflow</th>", "<span class='bad'>yes</span>" if info.formula_overflow else "no"))
    return "<h3>Implementation</h3><table>" + _rows(rows) + "</table>"


def _bad_rows(health: TableHealth) -> str:
    """Counts per verification mode, then the example keys."""
    found = health.verifications()
    if not found:
        return "<h3>Bad rows</h3><p class='muted'>no verification has finished yet</p>"
    head = "<tr><th>mode</th><th>checked</th><th>wrong</th><th>NULL</th><th>errors</th></tr>"
    body = _rows(
        (
            _e(v.mode),
            _num(v.rows_checked),
            *(
                f"<span class='{'bad' if n else 'ok'}'>{n:,}</span>"
                for n in (v.mismatched, v.null_keys, v.expression_errors)
            ),
        )
        for _, _, v in found
    )
    examples = [e for _, _, v in found for e in v.examples][:20]
    out = "<h3>Bad rows</h3><table>" + head + body + "</table>"
    if examples:
        ex_head = "<tr><th>kind</th><th>partition</th><th>primary key</th><th>stored</th><th>expected / error</th></tr>"
        ex_body = _rows(
            (
                _e(e.kind),
                _e(e.relation),
                "<code>" + ", ".join(f"{_e(k)}={_e(v)}" for k, v in e.primary_key.items()) + "</code>",
                _e("NULL" if e.stored_key is None else e.stored_key),
                _e(e.error if e.kind == "error" else e.expected_key),
            )
            for e in examples
        )
        out += "<p>Example keys:</p><table class='examples'>" + ex_head + ex_body + "</table>"
    return out


def _freshness(health: TableHealth, now: float) -> str:
    """Every check: did its last run succeed, when did it last succeed, and how often it runs."""
    head = "<tr><th>check</th><th>last run</th><th>last success</th><th>every</th><th>error</th></tr>"
    body = _rows(
        (
            _e(name),
            "<span class='ok'>ok</span>" if r.success else "<span class='bad'>failed</span>",
            _age(r.last_success_at, now),
            f"{r.interval_seconds:,.0f} s",
            _e(r.error or ""),
        )
        for name, r in sorted(health.results.items())
    )
    return "<h3>Check freshness</h3><table>" + head + body + "</table>"


def _section(health: TableHealth, expected: str | None, now: float) -> str:
    """One table of one target."""
    items = "".join(f"<li>{_e(reason)}</li>" for reason in reasons(health))
    spread = health.distribution
    return (
        f'<section class="table" data-target="{_a(health.target)}" data-table="{_a(health.table)}">'
        f"<h2>{_e(health.target)} / {_e(health.table)}"
        f'<span class="verdict {health.status}">{health.status}</span></h2>'
        f"<ul class='reasons'>{items}</ul>"
        + (_distribution(spread) if spread is not None else "<p class='muted'>no distribution yet</p>")
        + _implementation(health, expected)
        + _bad_rows(health)
        + _freshness(health, now)
        + "</section>"
    )


def _discovery(found: TargetDiscovery, now: float) -> str:
    """One tables: auto target: what it watches and why, what it left out and why, and how discovery went."""
    result, configured = found
    if result.success:
        state = "<span class='ok'>ok</span>"
    else:
        state = f"<span class='bad'>FAILED</span>: {_e(result.error)} (the tables found last stay watched)"
    rows = [
        (
            f"<code>{_e(t.label)}</code>",
            "watched",
            "configured in tables:",
            _e(f"on {t.monotonic_column}: monotonic_column in tables:" if t.monotonic_column else "off"),
        )
        for t in configured
    ]
    rows += [
        (
            f"<code>{_e(f.table.label)}</code>",
            "watched",
            f"key {_e(f.table.key_column)} kept by {_e(f.maintained_by)} = <code>{_e(f.formula)}</code>",
            _e(f.watermark.reason),
        )
        for f in result.found
    ]
    rows += [(f"<code>{_e(s.table)}</code>", "skipped", _e(s.reason), "") for s in result.skipped]
    table = (
        "<table><tr><th>table</th><th></th><th>why</th><th>incremental verification</th></tr>"
        + _rows(rows)
        + "</table>"
        if rows
        else "<p class='muted'>nothing to watch: no table whose integer key a hashtext formula keeps</p>"
    )
    return (
        f'<section class="discovery" data-target="{_a(result.target)}">'
        f"<h2>{_e(result.target)}: discovered tables</h2>"
        f"<p>discovery {state}; last success {_age(result.last_success_at, now)}</p>" + table + "</section>"
    )


def render_page(
    healths: list[TableHealth],
    expected: dict[tuple[str, str], str],
    now: float,
    discoveries: Iterable[TargetDiscovery] = (),
) -> str:
    """The whole page; EXPECTED maps (target, table) to the key formula the config expects."""
    status = overall_status(healths)
    nav = "".join(f'<a href="{path}">{html.escape(text)}</a>' for path, text in LINKS)
    found = "".join(_discovery(d, now) for d in discoveries)
    sections = "".join(_section(h, expected.get((h.target, h.table)), now) for h in healths)
    generated = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        f"<title>partkey-exporter: {status}</title><style>{CSS}</style></head><body>"
        f'<h1>partkey-exporter <span class="verdict {status}" id="overall">{status}</span></h1>'
        f"<nav>{nav}</nav>"
        f"<p class='muted'>From the exporter's last snapshot at {generated}; this page runs no SQL and reloads "
        f"every {REFRESH_SECONDS} s. Version {html.escape(__version__)}.</p>"
        + found
        + (sections or "<p>No tables configured.</p>")
        + "</body></html>\n"
    )


def partition_marks(spread: Distribution) -> dict[str, str]:
    """Partition name -> hot, cold or '' by rows, as the page and the report mark them."""
    regular: list[PartitionRows] = [p for p in spread.partitions if not p.is_default]
    return {p.name: mark(p.rows, spread.avg) for p in regular}


def status_page(exporter: Exporter, now: float | None = None) -> str:
    """The page for every configured table, from the exporter's current snapshot."""
    expected = {}
    for key, table in exporter.tables.items():
        text = table.spec.expression().as_string(None)
        # key_expression: auto verifies against the formula the table itself uses; show the safe form it should have.
        expected[key] = f"{text} (key_expression: auto, read from the table)" if table.spec.auto else text
    return render_page(exporter.health(), expected, time.time() if now is None else now, exporter.discoveries())
