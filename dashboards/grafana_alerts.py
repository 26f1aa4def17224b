"""Grafana-managed copies of the critical alerts, as a file-provisioning document."""

from __future__ import annotations

import json
from typing import Any

from grafana_foundation_sdk.builders import alerting, expr, prometheus
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import alerting as am
from grafana_foundation_sdk.models import dashboard as dm

from dashboards.rules import GRAFANA_DATASOURCE_UID, GRAFANA_FOLDER, Alert, critical_alerts

# Grafana's server-side expressions live in this pseudo-datasource.
_EXPR = dm.DataSourceRef(type_val="__expr__", uid="__expr__")

# Keys of the HTTP API shape that file provisioning takes from the enclosing group instead.
_API_ONLY = ("folderUID", "ruleGroup", "orgID")


def _grafana_template(text: str) -> str:
    """Prometheus's $value becomes the reduced value of query B, the one the threshold looks at."""
    return text.replace("$value", "$values.B.Value")


def grafana_rule(alert: Alert) -> alerting.Rule:
    """One Grafana-managed rule: A = the PromQL, B = last value, C = threshold on B."""
    assert alert.grafana is not None
    condition = alert.grafana
    query_a = (
        alerting.Query("A")
        .datasource_uid(GRAFANA_DATASOURCE_UID)
        .relative_time_range(am.RelativeTimeRange(from_val=600, to=0))
        .model(
            prometheus.Dataquery()
            .expr(condition.query)
            .ref_id("A")
            .instant()
            .datasource(dm.DataSourceRef(type_val="prometheus", uid=GRAFANA_DATASOURCE_UID))
        )
    )
    reduce_b = (
        alerting.Query("B")
        .datasource_uid("__expr__")
        .model(expr.TypeReduce().ref_id("B").expression("A").reducer("last").datasource(_EXPR))
    )
    threshold_c = (
        alerting.Query("C")
        .datasource_uid("__expr__")
        .model(
            expr.TypeThreshold()
            .ref_id("C")
            .expression("B")
            .datasource(_EXPR)
            .conditions(
                [
                    expr.ExprTypeThresholdConditions().evaluator(
                        expr.ExprTypeThresholdConditionsEvaluator().type(condition.op).params([condition.threshold])
                    )
                ]
            )
        )
    )
    return (
        alerting.Rule(alert.name)
        .uid(f"partkey-{alert.name.removeprefix('Partkey').lower()}")
        .condition("C")
        .queries([query_a, reduce_b, threshold_c])
        .for_val(alert.for_)
        # An exporter that vanishes entirely yields no data; Grafana's own NoData alert covers that.
        .no_data_state("NoData")
        .exec_err_state("Error")
        .labels({"severity": alert.severity})
        .annotations(
            {
                "summary": alert.summary,
                "description": _grafana_template(alert.description),
                "runbook_url": alert.runbook_url,
            }
        )
    )


def provisioning_document() -> dict[str, Any]:
    """The content of provisioning/alerting/partkey-critical.yaml."""
    rules: list[dict[str, Any]] = []
    for alert in critical_alerts():
        encoded = json.loads(json.dumps(grafana_rule(alert).build(), cls=JSONEncoder))
        rules.append({key: value for key, value in encoded.items() if key not in _API_ONLY})
    return {
        "apiVersion": 1,
        "groups": [
            {
                "orgId": 1,
                "name": "partkey-critical",
                "folder": GRAFANA_FOLDER,
                # Every minute, so each 5m `for` is counted over several evaluations.
                "interval": "1m",
                "rules": rules,
            }
        ],
    }
