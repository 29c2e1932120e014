"""deploy/k8s/overlays/gpu-keda: the gpu overlay with KEDA's ScaledObject in place of the HPA.

The built-in kinds validate strictly against the Kubernetes schemas of kubernetes-validate,
as in test_kubernetes.py. The ScaledObject validates against SCALED_OBJECT below: the fields of
KEDA v2's ScaledObject specification (https://keda.sh/docs/2.16/reference/scaledobject-spec/)
and of its Prometheus scaler (https://keda.sh/docs/2.16/scalers/prometheus/), written out here
with no unknown field allowed, so that a misspelt key fails offline as it would in the cluster.
Its HPA behaviour is checked with the Kubernetes HPA schema itself. The triggers' PromQL must
parse (promtool) and the queue trigger must read a metric the service exports; test_live_stack.py
runs it against a real Prometheus.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from deploy_tools import DEPLOY, run_tool
from promql_check import check_parses, metric_names, service_sample_names

Manifest = dict[str, Any]

_STRING = {"type": "string"}
_INT = {"type": "integer", "minimum": 0}


def _object(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required),
            "additionalProperties": False}


PROMETHEUS_METADATA = _object(
    {name: _STRING for name in (
        "serverAddress", "query", "threshold", "activationThreshold", "namespace",
        "customHeaders", "ignoreNullValues", "queryParameters", "unsafeSsl", "timeout")},
    required=("serverAddress", "query", "threshold"))

TRIGGER = _object({
    "type": _STRING,
    "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
    "metadata": {"type": "object", "additionalProperties": _STRING},
    "authenticationRef": _object({"name": _STRING, "kind": _STRING}, required=("name",)),
    "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
    "useCachedMetrics": {"type": "boolean"},
}, required=("type", "metadata"))

SCALED_OBJECT = _object({
    "apiVersion": {"const": "keda.sh/v1alpha1"},
    "kind": {"const": "ScaledObject"},
    "metadata": {"type": "object"},
    "spec": _object({
        "scaleTargetRef": _object({"apiVersion": _STRING, "kind": _STRING, "name": _STRING,
                                   "envSourceContainerName": _STRING}, required=("name",)),
        "pollingInterval": _INT,
        "cooldownPeriod": _INT,
        "initialCooldownPeriod": _INT,
        "idleReplicaCount": _INT,
        "minReplicaCount": _INT,
        "maxReplicaCount": {"type": "integer", "minimum": 1},
        "fallback": _object({"failureThreshold": _INT, "replicas": _INT, "behavior": _STRING},
                            required=("failureThreshold", "replicas")),
        "advanced": _object({
            "restoreToOriginalReplicaCount": {"type": "boolean"},
            "horizontalPodAutoscalerConfig": _object({"name": _STRING,
                                                      "behavior": {"type": "object"}}),
            "scalingModifiers": _object({"formula": _STRING, "target": _STRING,
                                         "activationTarget": _STRING, "metricType": _STRING}),
        }),
        "triggers": {"type": "array", "minItems": 1, "items": TRIGGER},
    }, required=("scaleTargetRef", "triggers")),
}, required=("apiVersion", "kind", "metadata", "spec"))


@pytest.fixture(scope="module")
def objects(kubectl: str) -> dict[str, Manifest]:
    out = run_tool(kubectl, "kustomize", str(DEPLOY / "k8s/overlays/gpu-keda")).stdout
    docs = [doc for doc in yaml.safe_load_all(out) if doc]
    by_kind = {doc["kind"]: doc for doc in docs}
    assert len(by_kind) == len(docs), "one object per kind expected"
    return by_kind


def _validate(instance: Manifest) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="pip install jsonschema")
    jsonschema.validate(instance, SCALED_OBJECT)


def test_the_scaled_object_replaces_the_hpa(objects: dict[str, Manifest]) -> None:
    assert "HorizontalPodAutoscaler" not in objects
    scaled = objects["ScaledObject"]["spec"]
    deployment = objects["Deployment"]
    assert scaled["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert scaled["scaleTargetRef"]["kind"] == deployment["kind"]
    assert "replicas" not in deployment["spec"], "the autoscaler owns the count"
    assert scaled["minReplicaCount"] == 0 < scaled["maxReplicaCount"]
    # The HPA that KEDA makes must not take the name of one left over from another overlay.
    assert scaled["advanced"]["horizontalPodAutoscalerConfig"]["name"] != "electric"
    # Still the GPU pods of the gpu overlay.
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] in (1, "1")


def test_the_scaled_object_validates(objects: dict[str, Manifest]) -> None:
    scaled = objects["ScaledObject"]
    _validate(scaled)
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == "prometheus"
        jsonschema = pytest.importorskip("jsonschema")
        jsonschema.validate(trigger["metadata"], PROMETHEUS_METADATA)


@pytest.mark.parametrize("mistake", ["misspelt spec field", "number not a string",
                                     "unknown scaler key"])
def test_the_schema_rejects_what_keda_would(objects: dict[str, Manifest], mistake: str) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="pip install jsonschema")
    bad = copy.deepcopy(objects["ScaledObject"])
    spec = bad["spec"]
    metadata = spec["triggers"][0]["metadata"]
    if mistake == "misspelt spec field":
        spec["minReplicas"] = spec.pop("minReplicaCount")
        schema = SCALED_OBJECT
    elif mistake == "number not a string":
        metadata["threshold"] = 128
        schema = SCALED_OBJECT
    else:
        metadata["activation_threshold"] = metadata.pop("activationThreshold")
        bad, schema = metadata, PROMETHEUS_METADATA
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_hpa_behaviour_is_a_valid_kubernetes_one(objects: dict[str, Manifest]) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    config = objects["ScaledObject"]["spec"]["advanced"]["horizontalPodAutoscalerConfig"]
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
           "metadata": {"name": config["name"]},
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                       "name": "electric"},
                    "maxReplicas": 10, "behavior": config["behavior"]}}
    kv.validate(hpa, "1.28.0", strict=True)


def test_built_in_kinds_validate(objects: dict[str, Manifest]) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    from kubernetes_validate.utils import SchemaNotFoundError

    without_schema = []
    for kind, obj in objects.items():
        try:
            kv.validate(obj, "1.28.0", strict=True)
        except SchemaNotFoundError:
            without_schema.append(kind)
    assert sorted(without_schema) == ["ScaledObject", "ServiceMonitor"]


def test_trigger_queries_parse_and_read_the_service(objects: dict[str, Manifest],
                                                    promtool: str, tmp_path: Any) -> None:
    pytest.importorskip("promql_parser", reason="pip install promql-parser")
    triggers = {t["name"]: t["metadata"] for t in objects["ScaledObject"]["spec"]["triggers"]}
    check_parses(promtool, {f"trigger {name}": m["query"] for name, m in triggers.items()},
                 tmp_path)
    assert metric_names(triggers["queue-depth"]["query"]) <= service_sample_names()
    # The wake-up trigger reads the ingress controller's counter: it exists with no replica.
    assert metric_names(triggers["ingress-requests"]["query"]) == {
        "nginx_ingress_controller_requests"}
    for metadata in triggers.values():
        assert float(metadata["activationThreshold"]) < float(metadata["threshold"])


def test_pods_spread_over_zones_and_nodes(objects: dict[str, Manifest]) -> None:
    spread = objects["Deployment"]["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in spread] == ["topology.kubernetes.io/zone",
                                                  "kubernetes.io/hostname"]
    assert all(c["whenUnsatisfiable"] == "ScheduleAnyway" for c in spread)
