"""deploy/kubernetes: fresh, valid against Kubernetes' and prometheus-operator's schemas, locked down, and usable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from deploy import generate
from exporter.config import load_config
from exporter.shard import parse_spec

CRDS = Path(__file__).parent / "fixtures" / "prometheus-operator"
# The oldest version the manifests promise (the StatefulSet's pod-index label needs 1.28) and the newest known.
KUBERNETES_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())
CORE_KINDS = {"Deployment", "StatefulSet", "Service", "ServiceAccount", "ConfigMap"}


def documents() -> dict[str, dict[str, Any]]:
    """Every committed manifest (not kustomizations), by path."""
    found = {}
    for path in sorted(generate.OUT.rglob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        if data["kind"] != "Kustomization":
            found[str(path.relative_to(generate.OUT))] = data
    return found


def test_the_committed_manifests_are_what_the_code_generates() -> None:
    """make deploy was run after the last change (of the code or of dashboards/alerts.yaml)."""
    assert generate.main(["--check"]) == 0, "deploy/kubernetes is stale: run make deploy"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_objects_validate_strictly(version: str) -> None:
    """kubernetes-validate, strict: unknown fields are errors too."""
    kinds = set()
    for data in documents().values():
        if data["kind"] in CORE_KINDS:
            kubernetes_validate.validate(data, version, strict=True)
            kinds.add(data["kind"])
    assert kinds == CORE_KINDS


def test_a_broken_object_is_refused() -> None:
    """The validation can fail: a misspelt field in the Deployment is caught."""
    data = generate.deployment()
    data["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(data, KUBERNETES_VERSIONS[-1], strict=True)


def _crd_schema(name: str) -> dict[str, Any]:
    """openAPIV3Schema of the served v1 version of a vendored CRD."""
    crd = yaml.safe_load((CRDS / f"monitoring.coreos.com_{name}.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.parametrize(
    ("path", "crd"), [("base/servicemonitor.yaml", "servicemonitors"), ("base/prometheusrule.yaml", "prometheusrules")]
)
def test_operator_objects_match_the_crd_schemas(path: str, crd: str) -> None:
    """ServiceMonitor and PrometheusRule against prometheus-operator 0.93.0's schemas; a wrong type fails."""
    # Not jsonschema.validate(): that checks the schema itself, and a Go regex in it ('^(?i)...') is not Python's.
    validator = jsonschema.Draft7Validator(_crd_schema(crd))
    data = documents()[path]
    validator.validate(data)
    broken = yaml.safe_load(yaml.safe_dump(data))
    if crd == "servicemonitors":
        broken["spec"]["endpoints"] = "metrics"
    else:
        broken["spec"]["groups"][0]["rules"] = {"record": "x"}
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(broken)


def test_the_prometheus_rule_is_dashboards_alerts_yaml() -> None:
    """The same groups as dashboards/alerts.yaml, so the two never drift."""
    rule = documents()["base/prometheusrule.yaml"]
    assert rule["spec"]["groups"] == yaml.safe_load(generate.ALERTS.read_text())["groups"]
    assert any("alert" in r for group in rule["spec"]["groups"] for r in group["rules"])


@pytest.mark.parametrize("path", ["deployment.yaml", "sharded/statefulset.yaml"])
def test_pods_are_locked_down(path: str) -> None:
    """Non-root, read-only root filesystem, no privilege escalation, every capability dropped, resources set."""
    pod = documents()[path]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]} and context["runAsNonRoot"] is True
    assert container["resources"]["requests"]["memory"] and container["resources"]["limits"]["memory"]
    secret = [v for v in pod["volumes"] if "secret" in v]
    assert secret == [{"name": "dsn", "secret": {"secretName": generate.SECRET_NAME, "defaultMode": 0o400}}]
    assert "password" not in yaml.safe_dump(documents()).lower().replace("password=${", "")


def test_each_shard_takes_its_index_from_the_pod_ordinal() -> None:
    """PARTKEY_SHARD is '$(POD_INDEX)/4', POD_INDEX the pod-index label: pod 3 gets 3/4."""
    env = documents()["sharded/statefulset.yaml"]["spec"]["template"]["spec"]["containers"][0]["env"]
    by_name = {e["name"]: e for e in env}
    assert list(by_name) == ["POD_INDEX", "PARTKEY_SHARD"]  # defined before use, as $(VAR) expansion needs
    label = by_name["POD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert label == "metadata.labels['apps.kubernetes.io/pod-index']"
    replicas = documents()["sharded/statefulset.yaml"]["spec"]["replicas"]
    for ordinal in range(replicas):
        assert parse_spec(by_name["PARTKEY_SHARD"]["value"].replace("$(POD_INDEX)", str(ordinal))) == (
            ordinal,
            replicas,
        )


def test_the_shipped_config_loads(tmp_path: Path) -> None:
    """The ConfigMap's config.yaml with its example target file is a valid config, as mounted in the pod."""
    data = documents()["base/configmap.yaml"]["data"]
    (tmp_path / "targets.d").mkdir()
    (tmp_path / "config.yaml").write_text(data["config.yaml"])
    (tmp_path / "targets.d" / "orders.yaml").write_text(data["orders.yaml"])
    config = load_config(tmp_path / "config.yaml")
    assert [t.name for t in config.targets] == ["orders"]
    assert config.listen.port == generate.PORT and config.targets[0].dsn is None


def test_kustomizations_list_files_that_exist() -> None:
    """kubectl apply -k deploy/kubernetes (and sharded/): every resource named is there."""
    for path in generate.OUT.rglob("kustomization.yaml"):
        for resource in yaml.safe_load(path.read_text())["resources"]:
            assert (path.parent / resource).exists(), (path, resource)
