"""The committed dashboard JSON is what the code generates, loads through the SDK and is well-formed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

from dashboards import generate
from dashboards.queries import BUILTINS

DASHBOARDS = sorted(generate.BUILDERS)
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def _load(name: str) -> dict[str, Any]:
    """The committed JSON of one dashboard."""
    data: dict[str, Any] = json.loads((generate.DASHBOARD_DIR / name).read_text())
    return data


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every non-row panel."""
    return [p for p in board["panels"] if p["type"] != "row"]


@pytest.mark.parametrize("path", sorted(generate.render()), ids=lambda p: p.name)
def test_committed_file_is_what_the_code_generates(path: Path) -> None:
    """A stale committed file fails here; `make dashboards` fixes it."""
    assert path.exists(), f"{path} is missing: run `make dashboards`"
    assert path.read_text() == generate.render()[path], f"{path} is stale: run `make dashboards`"


def test_generator_writes_exactly_the_committed_set() -> None:
    """No dashboard JSON lies around that the code no longer produces."""
    assert sorted(p.name for p in generate.DASHBOARD_DIR.glob("*.json")) == [
        "partkey-distribution.json",
        "partkey-insert-latency.json",
        "partkey-overview.json",
    ]


@pytest.mark.parametrize("name", DASHBOARDS)
def test_json_loads_back_through_the_sdk(name: str) -> None:
    """Dashboard.from_json accepts the file and keeps every panel and query typed."""
    register_default_plugins()
    data = _load(name)
    model = dm.Dashboard.from_json(data)
    assert model.title == data["title"]
    assert model.uid == data["uid"]
    assert data["schemaVersion"] == 41  # the Grafana 11.6 build of the SDK, not the 10.1 default
    assert model.panels is not None
    assert len(model.panels) == len(data["panels"])
    for panel, raw in zip(model.panels, data["panels"], strict=True):
        assert panel.type_val == raw["type"]
        if isinstance(panel, dm.Panel):
            assert panel.targets is not None
            assert all(isinstance(t, pm.Dataquery) for t in panel.targets)
            assert [t.expr for t in panel.targets if isinstance(t, pm.Dataquery)] == [t["expr"] for t in raw["targets"]]


def test_dashboards_have_the_expected_panels() -> None:
    """Each dashboard has the visualisations the issue asks for, under stable uids."""
    kinds = {}
    for name in DASHBOARDS:
        board = _load(name)
        kinds[board["uid"]] = sorted(p["type"] for p in _panels(board))
    assert kinds == {
        "partkey-overview": ["stat"] * 6 + ["state-timeline"] + ["table"] * 2 + ["timeseries"] * 7,
        "partkey-distribution": ["bargauge"] * 4 + ["heatmap"] + ["stat"] * 10 + ["timeseries"] * 5,
        "partkey-insert-latency": ["heatmap", "stat", "timeseries", "timeseries", "timeseries"],
    }


@pytest.mark.parametrize("name", DASHBOARDS)
def test_variables(name: str) -> None:
    """$datasource, $target and $table exist; query variables use $datasource and label values."""
    board = _load(name)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert list(variables)[:3] == ["datasource", "target", "table"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for var in ("target", "table"):
        assert variables[var]["type"] == "query"
        assert variables[var]["datasource"] == DATASOURCE
        assert variables[var]["query"].startswith("label_values(")
        assert variables[var]["multi"] is True
        assert variables[var]["includeAll"] is True
    assert variables["target"]["query"] == "label_values(partkey_up, target)"
    assert variables["table"]["query"] == 'label_values(partkey_check_success{target=~"$target"}, table)'


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_panel_uses_the_datasource_variable(name: str) -> None:
    """Panels and their queries point at ${datasource}, never a fixed uid."""
    for panel in _panels(_load(name)):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


@pytest.mark.parametrize("name", DASHBOARDS)
def test_ref_ids_are_set_and_unique(name: str) -> None:
    """Every query has its own refId within its panel (the SDK leaves it empty unless told)."""
    for panel in _panels(_load(name)):
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert all(ref_ids), panel["title"]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert ref_ids == [chr(ord("A") + i) for i in range(len(ref_ids))], panel["title"]


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_used_variable_is_defined(name: str) -> None:
    """Variables in queries, legends and titles are defined by the dashboard or built into Grafana."""
    board = _load(name)
    defined = {v["name"] for v in board["templating"]["list"]} | set(BUILTINS)
    texts = [v["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    for panel in _panels(board):
        texts.append(panel["title"])
        texts.extend(t["expr"] for t in panel["targets"])
        texts.extend(t.get("legendFormat", "") for t in panel["targets"])
    used = {m.group(1) or m.group(2) for text in texts for m in _VARIABLE.finditer(text)}
    assert used, "no variable used at all"
    assert used <= defined, f"undefined: {sorted(used - defined)}"


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_panel_says_what_to_do(name: str) -> None:
    """Each panel has a description long enough to say what to do when it looks wrong."""
    for panel in _panels(_load(name)):
        description = panel.get("description", "")
        assert len(description) >= 80, f"{panel['title']}: description too short"
        assert description.rstrip().endswith("."), panel["title"]


@pytest.mark.parametrize("name", DASHBOARDS)
def test_layout_fits_the_grid(name: str) -> None:
    """Panels stay within 24 columns, titles are unique and no two panels overlap."""
    board = _load(name)
    titles = [p["title"] for p in _panels(board)]
    assert len(titles) == len(set(titles))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        columns = range(pos["x"], pos["x"] + pos["w"])
        mine = {(x, y) for x in columns for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_latency_heatmap_reads_prometheus_buckets() -> None:
    """The probe heatmap asks Prometheus for heatmap-format buckets and does not re-bucket them."""
    board = _load("partkey-insert-latency.json")
    heatmap = next(p for p in board["panels"] if p["type"] == "heatmap")
    assert heatmap["options"]["calculate"] is False
    assert heatmap["targets"][0]["format"] == "heatmap"
    assert heatmap["targets"][0]["legendFormat"] == "{{le}}"
    assert "partkey_insert_probe_duration_seconds_bucket" in heatmap["targets"][0]["expr"]


def test_dashboard_uids_are_unique() -> None:
    """Provisioning keys dashboards by uid."""
    uids = [_load(name)["uid"] for name in DASHBOARDS]
    assert sorted(uids) == ["partkey-distribution", "partkey-insert-latency", "partkey-overview"]
