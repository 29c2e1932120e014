"""deploy/k8s: both overlays render with `kubectl kustomize` and validate offline.

Built-in kinds validate against the Kubernetes JSON schemas shipped in the PyPI package
kubernetes-validate, strictly (an unknown or misspelt field fails), for an older and the newest
Kubernetes version it knows. CRD kinds (ServiceMonitor) have no schema offline: the test allows
exactly those, and checks instead that what they reference exists (selector -> Service labels,
port name -> Service port). The remaining tests check the wiring between objects and the
deployment's contracts (docs/DEPLOY.md): probes, drain vs grace period, security context, GPU
placement.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import yaml
from deploy_tools import DEPLOY, run_tool
from promql_check import check_parses, fill_adapter, metric_names, service_sample_names

from service.settings import Settings

OVERLAYS = ("cpu", "gpu")
# Kinds from CRDs, which kubernetes-validate has no schema for, and the API that defines them.
CRD_KINDS = {"ServiceMonitor": "monitoring.coreos.com/v1"}
KINDS = {"ServiceAccount", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget",
         "HorizontalPodAutoscaler", "NetworkPolicy", *CRD_KINDS}
# uvicorn's graceful-shutdown window after the drain (service/server.py _SHUTDOWN_GRACE_S).
UVICORN_SHUTDOWN_S = 5

Manifest = dict[str, Any]


@functools.cache
def _render(kubectl: str, overlay: str) -> tuple[Manifest, ...]:
    out = run_tool(kubectl, "kustomize", str(DEPLOY / "k8s/overlays" / overlay)).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def objects(kubectl: str, overlay: str) -> dict[str, Manifest]:
    """The rendered overlay, by kind (each kind appears once)."""
    docs = _render(kubectl, overlay)
    by_kind = {doc["kind"]: doc for doc in docs}
    assert len(by_kind) == len(docs), "one object per kind expected"
    return by_kind


def container(objects: dict[str, Manifest]) -> Manifest:
    (only,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    return dict(only)


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def settings_of(objects: dict[str, Manifest]) -> dict[str, str]:
    return dict(objects["ConfigMap"]["data"])


def test_renders_every_kind(objects: dict[str, Manifest]) -> None:
    assert set(objects) == KINDS


@pytest.mark.parametrize("version", ["1.28.0", "latest"])
def test_validates_against_kubernetes_schemas(objects: dict[str, Manifest], version: str) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    from kubernetes_validate.utils import SchemaNotFoundError, latest_version

    version = latest_version() if version == "latest" else version
    without_schema = []
    for kind, obj in objects.items():
        try:
            kv.validate(obj, version, strict=True)
        except SchemaNotFoundError:
            without_schema.append(kind)
        except kv.ValidationError as exc:
            pytest.fail(f"{kind} does not validate against Kubernetes {version}: {exc.message} "
                        f"at {'.'.join(map(str, exc.path))}")
    assert sorted(without_schema) == sorted(CRD_KINDS)
    for kind, api in CRD_KINDS.items():
        assert objects[kind]["apiVersion"] == api


def test_validator_rejects_a_misspelt_field(objects: dict[str, Manifest]) -> None:
    """The strict schemas really are applied: one wrong field name fails."""
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    bad = yaml.safe_load(yaml.safe_dump(objects["Deployment"]))
    security = bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    security["readOnlyRootFileSystem"] = security.pop("readOnlyRootFilesystem")
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, "1.28.0", strict=True)


def test_objects_reference_each_other(objects: dict[str, Manifest]) -> None:
    deployment, service = objects["Deployment"], objects["Service"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    assert matches(service["spec"]["selector"], pod_labels)
    assert matches(objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"], pod_labels)
    assert matches(objects["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"], pod_labels)

    port_names = {p["name"] for p in container(objects)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    ingress_ports = {p["port"] for rule in objects["NetworkPolicy"]["spec"]["ingress"]
                     for p in rule["ports"]}
    assert ingress_ports <= port_names

    target = objects["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])

    monitor = objects["ServiceMonitor"]["spec"]
    assert matches(monitor["selector"]["matchLabels"], service["metadata"]["labels"])
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["endpoints"]:
        assert endpoint["port"] in service_ports and endpoint["path"] == "/metrics"

    config, secret = container(objects)["envFrom"]
    assert config["configMapRef"]["name"] == objects["ConfigMap"]["metadata"]["name"]
    # API keys come from a Secret the operator creates; the pod starts without one.
    assert secret["secretRef"]["optional"] is True
    sa = objects["ServiceAccount"]["metadata"]["name"]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == sa


def test_config_map_holds_valid_settings(objects: dict[str, Manifest]) -> None:
    data = settings_of(objects)
    fields = {key.removeprefix("ELECTRIC_").lower(): value for key, value in data.items()}
    assert all(key.startswith("ELECTRIC_") for key in data)
    assert set(fields) <= set(Settings.model_fields), "unknown ELECTRIC_ setting"
    settings = Settings(**fields)  # pydantic checks every value as the service would
    assert settings.host == "0.0.0.0"
    port = next(p for p in container(objects)["ports"] if p["name"] == "http")
    assert port["containerPort"] == settings.port


def test_probes_use_the_service_endpoints(objects: dict[str, Manifest]) -> None:
    c = container(objects)
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_grace_period_outlasts_pre_stop_and_drain(objects: dict[str, Manifest]) -> None:
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    command = container(objects)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    fields = {k.removeprefix("ELECTRIC_").lower(): v for k, v in settings_of(objects).items()}
    drain = Settings(**fields).drain_timeout_s
    needed = float(command[1]) + drain + UVICORN_SHUTDOWN_S
    assert pod["terminationGracePeriodSeconds"] > needed


def test_service_links_are_off(objects: dict[str, Manifest]) -> None:
    """A Service named "electric" would inject ELECTRIC_PORT=tcp://..., which the settings
    read as the port and refuse."""
    assert objects["Deployment"]["spec"]["template"]["spec"]["enableServiceLinks"] is False


def test_runs_locked_down(objects: dict[str, Manifest]) -> None:
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    security = container(objects)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # A read-only root needs a writable /tmp (HOME, tempfile, the CUDA kernel cache).
    mounts = {m["mountPath"]: m["name"] for m in container(objects)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    policy = objects["NetworkPolicy"]["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"} and not policy.get("egress")


def test_threads_match_the_cpu_limit(objects: dict[str, Manifest]) -> None:
    """ONNX Runtime cannot see the cgroup quota; more threads than cores only contend."""
    limit = container(objects)["resources"]["limits"]["cpu"]
    settings = settings_of(objects)
    threads = int(settings["ELECTRIC_PARALLEL_BATCHES"]) * int(settings["ELECTRIC_INTRA_OP_THREADS"])
    assert threads == int(limit)


def test_gpu_overlay_asks_for_a_gpu_and_fp16(kubectl: str) -> None:
    objects = {doc["kind"]: doc for doc in _render(kubectl, "gpu")}
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    assert int(container(objects)["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert objects["ConfigMap"]["data"]["ELECTRIC_VARIANT"] == "fp16"
    assert objects["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"].endswith(
        "-gpu")


def test_cpu_overlay_has_no_gpu(kubectl: str) -> None:
    objects = {doc["kind"]: doc for doc in _render(kubectl, "cpu")}
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in container(objects)["resources"].get("limits", {})
    assert "nodeSelector" not in pod and "tolerations" not in pod


def test_hpa_metric_is_served_by_the_adapter_rule(objects: dict[str, Manifest], promtool: str,
                                                  tmp_path: Any) -> None:
    """The HPA's Pods metric is what the adapter rule names, from a metric the service exports,
    through a query Prometheus parses."""
    pytest.importorskip("promql_parser", reason="pip install promql-parser")
    values = yaml.safe_load((DEPLOY / "prometheus-adapter/values.yaml").read_text())
    rules = {rule["name"]["as"]: rule for rule in values["rules"]["custom"]}
    (metric,) = objects["HorizontalPodAutoscaler"]["spec"]["metrics"]
    assert metric["type"] == "Pods"
    rule = rules[metric["pods"]["metric"]["name"]]
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}

    (series,) = metric_names(rule["seriesQuery"])
    assert series in service_sample_names()
    query = fill_adapter(rule["metricsQuery"], series, 'namespace="ml",pod=~"electric-.*"', "pod")
    assert metric_names(query) == {series}
    check_parses(promtool, {"adapter seriesQuery": rule["seriesQuery"],
                            "adapter metricsQuery": query}, tmp_path)
