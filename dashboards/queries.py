"""Every PromQL expression the dashboards and rules run, with template variables filled in.

For the end-to-end test: scrape the live exporter with a real Prometheus (loading dashboards/alerts.yaml
so recording rules exist), then run each `NamedQuery.expr` and check it returns data.

    from dashboards.queries import all_queries
    for q in all_queries(target="demo", table="public.chunks"):
        ...  # q.name, q.kind, q.expr, q.instant

Or from a shell, against a running Prometheus, to see which queries return nothing:

    python -m dashboards.queries --prometheus http://127.0.0.1:9090 --target demo --table public.chunks
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

ROOT = Path(__file__).resolve().parent
DASHBOARD_DIR = ROOT / "grafana"
ALERTS_FILE = ROOT / "alerts.yaml"
GRAFANA_ALERTS_FILE = ROOT / "provisioning" / "alerting" / "partkey-critical.yaml"

Kind = Literal["panel", "variable", "record", "alert", "grafana-alert"]

# Grafana's global variables that may appear in a query, longest first so $__range_s wins over $__range.
BUILTINS = ("__rate_interval", "__interval_ms", "__interval", "__range_ms", "__range_s", "__range")

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
# label_values(<selector>, label): the selector is the PromQL a variable query really runs.
_LABEL_VALUES = re.compile(r"^label_values\((?:(.*),\s*)?(\w+)\)$")
# Grafana escapes these in a multi-value variable interpolated into a regex matcher.
_REGEX_SPECIAL = re.compile(r"([\\^$*+?.()|{}\[\]])")


@dataclass(frozen=True)
class NamedQuery:
    """One expression, where it comes from, and how Grafana or Prometheus runs it."""

    name: str
    kind: Kind
    expr: str
    raw: str
    instant: bool
    datasource_uid: str


def _durations(rate_interval: str, interval: str, range_: str) -> dict[str, str]:
    """Values for Grafana's global time variables."""
    seconds = _seconds(range_)
    return {
        "__rate_interval": rate_interval,
        "__interval": interval,
        "__interval_ms": str(_seconds(interval) * 1000),
        "__range": range_,
        "__range_s": str(seconds),
        "__range_ms": str(seconds * 1000),
    }


def _seconds(duration: str) -> int:
    """Seconds in a simple Prometheus duration such as 30s, 5m, 1h or 1d."""
    match = re.fullmatch(r"(\d+)([smhd])", duration)
    if match is None:
        raise ValueError(f"expected a duration like 30s, 5m, 1h or 1d, got {duration!r}")
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace $name and ${name} as Grafana would; values inside a =~ matcher are regex-escaped."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"no value for ${name} in {expr!r}")
        value = values[name]
        # Inside =~"..." Grafana escapes multi-value variables, so public.chunks matches only itself.
        opening = expr.rfind('"', 0, match.start())
        if name in BUILTINS or opening < 2 or expr[opening - 2 : opening] != "=~":
            return value
        return _REGEX_SPECIAL.sub(r"\\\\\1", value)

    return _VARIABLE.sub(replace, expr)


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    panels: list[dict[str, Any]] = []
    for panel in board.get("panels", []):
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def dashboard_queries(board: dict[str, Any], values: dict[str, str]) -> list[NamedQuery]:
    """Panel and variable queries of one dashboard JSON."""
    title = board["title"]
    found: list[NamedQuery] = []
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        text = variable["query"] if isinstance(variable["query"], str) else variable["query"]["query"]
        match = _LABEL_VALUES.match(text)
        selector = (match.group(1) if match else None) or text
        found.append(
            NamedQuery(
                name=f"{title} / variable ${variable['name']}",
                kind="variable",
                expr=substitute(selector, values),
                raw=text,
                instant=True,
                datasource_uid=substitute(variable["datasource"]["uid"], values),
            )
        )
    for panel in _panels(board):
        for target in panel.get("targets", []):
            found.append(
                NamedQuery(
                    name=f"{title} / {panel['title']} / {target['refId']}",
                    kind="panel",
                    expr=substitute(target["expr"], values),
                    raw=target["expr"],
                    instant=bool(target.get("instant")) and not target.get("range"),
                    datasource_uid=substitute(target["datasource"]["uid"], values),
                )
            )
    return found


def rule_queries(datasource: str) -> list[NamedQuery]:
    """Recording and alerting rule expressions from dashboards/alerts.yaml (they use no variables)."""
    document = yaml.safe_load(ALERTS_FILE.read_text())
    found: list[NamedQuery] = []
    for group in document["groups"]:
        for index, rule in enumerate(group["rules"]):
            is_alert = "alert" in rule
            name = rule["alert"] if is_alert else f"{rule['record']} #{index}"
            found.append(
                NamedQuery(
                    name=f"{group['name']} / {name}",
                    kind="alert" if is_alert else "record",
                    expr=rule["expr"],
                    raw=rule["expr"],
                    instant=True,
                    datasource_uid=datasource,
                )
            )
    return found


def grafana_alert_queries() -> list[NamedQuery]:
    """The Prometheus query (refId A) of each Grafana-managed alert."""
    document = yaml.safe_load(GRAFANA_ALERTS_FILE.read_text())
    found: list[NamedQuery] = []
    for group in document["groups"]:
        for rule in group["rules"]:
            for item in rule["data"]:
                if item["datasourceUid"] == "__expr__":
                    continue
                found.append(
                    NamedQuery(
                        name=f"grafana / {rule['title']} / {item['refId']}",
                        kind="grafana-alert",
                        expr=item["model"]["expr"],
                        raw=item["model"]["expr"],
                        instant=True,
                        datasource_uid=item["datasourceUid"],
                    )
                )
    return found


def all_queries(
    target: str = "demo",
    table: str = "public.chunks",
    *,
    source: str = "estimate",
    datasource: str = "partkey-prometheus",
    rate_interval: str = "1m",
    interval: str = "15s",
    range_: str = "1h",
) -> list[NamedQuery]:
    """Every panel, variable, recording-rule, alert and Grafana-alert expression, ready to run."""
    values = {
        "target": target,
        "table": table,
        "source": source,
        "datasource": datasource,
        **_durations(rate_interval, interval, range_),
    }
    found: list[NamedQuery] = []
    for path in sorted(DASHBOARD_DIR.glob("*.json")):
        found.extend(dashboard_queries(json.loads(path.read_text()), values))
    found.extend(rule_queries(datasource))
    found.extend(grafana_alert_queries())
    return found


def series_count(prometheus: str, expr: str, timeout: float = 10.0) -> int:
    """How many series an instant query returns now (raises on a query error)."""
    url = f"{prometheus.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310  # an operator-given URL
        body = json.load(response)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr!r}: {body.get('error')}")
    return len(body["data"]["result"])


def main(argv: list[str] | None = None) -> int:
    """Print every query, or with --prometheus, how many series each returns; exit 1 if a panel is empty."""
    parser = argparse.ArgumentParser(prog="python -m dashboards.queries", description=main.__doc__)
    parser.add_argument("--prometheus", help="base URL of a Prometheus that scrapes the exporter")
    parser.add_argument("--target", default="demo")
    parser.add_argument("--table", default="public.chunks")
    parser.add_argument("--source", default="estimate")
    args = parser.parse_args(argv)
    empty = 0
    for q in all_queries(args.target, args.table, source=args.source):
        if args.prometheus is None:
            print(f"{q.kind}\t{q.name}\t{' '.join(q.expr.split())}")
            continue
        count = series_count(args.prometheus, q.expr)
        # Alerts are empty when all is well; panels and variables should always have data.
        if count == 0 and q.kind in ("panel", "variable", "record"):
            empty += 1
        print(f"{count:4d}  {q.kind:13s} {q.name}")
    return 1 if empty else 0


if __name__ == "__main__":
    sys.exit(main())
