"""deploy/prometheus: promtool accepts the config and the rules, and the rules' unit tests pass.

`promtool test rules` replays synthetic series through every alert (alerts.test.yml): each one
fires, with its labels and text, in an unhealthy scenario and stays silent in a healthy one.
test_live_stack.py runs the same files in a real Prometheus against the real service.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from deploy_tools import DEPLOY, run_tool
from promql_check import metric_names, service_sample_names

PROMETHEUS = DEPLOY / "prometheus"
# Metrics the alerts may name that the service does not export: Prometheus' own scrape health
# and kube-state-metrics' view of the Deployment (the "not ready" alerts).
EXTERNAL = {"up", "kube_deployment_status_replicas_unavailable",
            "kube_deployment_status_replicas_available"}


def alert_rules() -> list[dict[str, str]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_checks_the_config(promtool: str) -> None:
    out = run_tool(promtool, "check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert "SUCCESS" in out.stdout


def test_promtool_checks_the_rules(promtool: str) -> None:
    out = run_tool(promtool, "check", "rules", str(PROMETHEUS / "alerts.yml"))
    assert f"SUCCESS: {len(alert_rules())} rules found" in out.stdout


def test_alert_unit_tests_pass(promtool: str) -> None:
    out = run_tool(promtool, "test", "rules", str(PROMETHEUS / "alerts.test.yml"))
    assert "SUCCESS" in out.stdout


def test_every_alert_has_a_unit_test() -> None:
    tests = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())["tests"]
    tested = [case["alertname"] for test in tests for case in test["alert_rule_test"]
              if case.get("exp_alerts")]
    assert sorted(tested) == sorted(rule["alert"] for rule in alert_rules())


def test_alerts_cover_latency_errors_saturation_and_readiness() -> None:
    """p99 latency, 429 rate, 5xx rate, queue saturation, not ready."""
    exprs = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    wanted = {"latency": "histogram_quantile(0.99", "429": 'status="429"', "5xx": 'status=~"5.."',
              "queue": "electric_queue_depth", "not ready": "replicas_available"}
    for what, needle in wanted.items():
        assert any(needle in expr for expr in exprs.values()), f"no alert on {what}"


def test_alerts_name_only_real_metrics() -> None:
    pytest.importorskip("promql_parser", reason="pip install promql-parser")
    exported = service_sample_names()
    for rule in alert_rules():
        unknown = metric_names(rule["expr"]) - exported - EXTERNAL
        assert not unknown, f"{rule['alert']} names metrics nobody exports: {unknown}"


def test_config_loads_the_rules_file_beside_it() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    for name in config["rule_files"]:
        assert (PROMETHEUS / Path(name)).is_file()
