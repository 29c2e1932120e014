"""A real Prometheus scrapes a real service process, with the deploy files' own configuration.

The service runs a tiny exported artifact on loopback (as tests/service/test_server.py does);
Prometheus runs deploy/prometheus/prometheus.yml with its target swapped for that process and
the scrape and rule intervals cut to 1 s, and loads alerts.yml. Then, through Prometheus' HTTP
API: the request counter counts the requests sent, every alert rule evaluates without error,
every Grafana query runs and returns data, and the Prometheus adapter's query gives the pod its
queue depth. Every wait is bounded.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from deploy_tools import DEPLOY, ROOT
from promql_check import dashboard_exprs, fill_adapter, metric_names, service_sample_names

PROMETHEUS = DEPLOY / "prometheus"
N_REQUESTS = 5
WAIT_S = 60
# The labels a ServiceMonitor adds in a cluster, which the adapter rule maps onto pods.
POD_LABELS = {"namespace": "test", "pod": "electric-test"}

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(probe: Callable[[], T | None], what: str, log: Path | None = None) -> T:
    """Poll ``probe`` until it returns something other than None, for at most WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            value = probe()
        except httpx.TransportError:
            value = None
        if value is not None:
            return value
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    pytest.fail(f"timed out after {WAIT_S} s waiting for {what}\n{tail}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def service(tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("service") / "service.log"
    env = {**os.environ, "ELECTRIC_ARTIFACT": str(tiny_artifact), "ELECTRIC_VARIANT": "fp32",
           "ELECTRIC_PORT": str(port), "ELECTRIC_INTRA_OP_THREADS": "1",
           "ELECTRIC_LOG_LEVEL": "warning", "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", "from service.server import run; run()"],
                                env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool | None:
            assert proc.poll() is None, log.read_text()
            return httpx.get(f"{url}/readyz", timeout=5).status_code == 200 or None

        wait_for(ready, "the service to turn ready", log)
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def prometheus(prometheus_bin: str, service: str,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [service.removeprefix("http://")],
                              "labels": POD_LABELS}]
    config["rule_files"] = [str(PROMETHEUS / name) for name in config["rule_files"]]
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = folder / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [prometheus_bin, f"--config.file={folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool | None:
            assert proc.poll() is None, log.read_text()
            return httpx.get(f"{url}/-/ready", timeout=5).status_code == 200 or None

        wait_for(ready, "Prometheus to start", log)
        yield url
    finally:
        stop(proc)


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    """An instant query; fails the test on any error Prometheus reports."""
    body = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", f"{expr}: {body.get('error')}"
    return list(body["data"]["result"])


@pytest.fixture(scope="module")
def traffic(service: str, prometheus: str) -> int:
    """Send N_REQUESTS scores, and wait until Prometheus has scraped their count."""
    with httpx.Client(base_url=service, timeout=10) as client:
        for _ in range(N_REQUESTS):
            response = client.post("/v1/score", json={"sentences": ["the cat sat"]})
            assert response.status_code == 200
    counter = 'sum(electric_requests_total{job="electric",endpoint="/v1/score",status="200"})'

    def counted() -> int | None:
        result = query(prometheus, counter)
        return int(float(result[0]["value"][1])) if result else None

    def all_counted() -> int | None:
        value = counted()
        return value if value == N_REQUESTS else None

    return wait_for(all_counted, f"Prometheus to see {N_REQUESTS} requests")


def test_query_returns_the_request_counter(traffic: int) -> None:
    assert traffic == N_REQUESTS


def test_scraped_names_are_the_service_exports(prometheus: str, traffic: int) -> None:
    names = httpx.get(f"{prometheus}/api/v1/label/__name__/values", timeout=10).json()["data"]
    scraped = {name for name in names if name.startswith("electric_")}
    assert scraped and scraped <= service_sample_names()


def test_alert_rules_evaluate_without_error(prometheus: str, traffic: int) -> None:
    def evaluated() -> list[dict[str, Any]] | None:
        body = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()
        rules = [rule for group in body["data"]["groups"] for rule in group["rules"]]
        return rules if rules and all(r["health"] != "unknown" for r in rules) else None

    rules = wait_for(evaluated, "every alert rule to be evaluated")
    alerts = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"][0]["rules"]
    assert {rule["name"] for rule in rules} == {alert["alert"] for alert in alerts}
    broken = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not broken


def test_dashboard_queries_return_data(prometheus: str, traffic: int) -> None:
    pytest.importorskip("promql_parser", reason="pip install promql-parser")
    names = set(httpx.get(f"{prometheus}/api/v1/label/__name__/values", timeout=10).json()["data"])
    for where, expr in dashboard_exprs().items():
        assert metric_names(expr) <= names, f"{where}: Prometheus never scraped {expr}"
        if "status!~" in expr:
            continue  # non-2xx answers: none were sent, so no series is right
        result = wait_for(lambda e=expr: query(prometheus, e) or None, f"data for {where}")
        assert all(isinstance(sample["metric"], dict) for sample in result)


def test_adapter_rule_gives_the_pod_its_queue_depth(prometheus: str, traffic: int) -> None:
    values = yaml.safe_load((DEPLOY / "prometheus-adapter/values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    series = httpx.get(f"{prometheus}/api/v1/series", params={"match[]": rule["seriesQuery"]},
                       timeout=10).json()["data"]
    assert [s["pod"] for s in series] == [POD_LABELS["pod"]]
    expr = fill_adapter(rule["metricsQuery"], series[0]["__name__"],
                        f'namespace="{POD_LABELS["namespace"]}",pod=~"{POD_LABELS["pod"]}"', "pod")
    (sample,) = wait_for(lambda: query(prometheus, expr) or None, "the adapter's query")
    assert sample["metric"] == {"pod": POD_LABELS["pod"]}
    assert math.isfinite(float(sample["value"][1]))


def test_keda_queue_trigger_reads_the_queue(prometheus: str, traffic: int) -> None:
    scaled = yaml.safe_load((DEPLOY / "k8s/overlays/gpu-keda/scaledobject.yaml").read_text())
    triggers = {t["name"]: t["metadata"] for t in scaled["spec"]["triggers"]}
    expr = triggers["queue-depth"]["query"]
    (sample,) = wait_for(lambda: query(prometheus, expr) or None, "the KEDA trigger's query")
    assert float(sample["value"][1]) == 0.0  # every request was answered: nothing queued
    # The wake-up trigger's series comes from an ingress controller, absent here: the query is
    # still valid and empty, which KEDA reads as 0 (ignoreNullValues).
    assert query(prometheus, triggers["ingress-requests"]["query"]) == []
