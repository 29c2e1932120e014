"""deploy/grafana: every dashboard expression is PromQL that names only exported metrics.

Grafana's variables ($job, $__rate_interval, ...) are filled in first; Prometheus' parser
(promtool) then judges the syntax, and the metric names read off each syntax tree must be among
the sample names the service's /metrics exposes (histograms as _bucket/_sum/_count, counters
as _total). test_live_stack.py runs the same expressions in a real Prometheus.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from deploy_tools import DEPLOY
from promql_check import (
    DASHBOARD,
    check_parses,
    dashboard_exprs,
    metric_names,
    panels,
    service_sample_names,
)

GRAFANA = DEPLOY / "grafana"
# What an operator needs the dashboard to show (docs/DEPLOY.md), and a metric that shows it.
WANTED = {"throughput": "electric_requests_total", "tokens": "electric_tokens_scored_total",
          "latency percentiles": "electric_request_duration_seconds_bucket",
          "batch size": "electric_batch_size_bucket", "padding waste": "electric_batch_tokens_sum",
          "queue depth": "electric_queue_depth", "errors by reason": "electric_rejections_total"}


def test_every_expression_parses(promtool: str, tmp_path: Path) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) > 10
    check_parses(promtool, exprs, tmp_path)


def test_every_expression_names_exported_metrics() -> None:
    pytest.importorskip("promql_parser", reason="pip install promql-parser")
    exported = service_sample_names()
    for where, expr in dashboard_exprs().items():
        names = metric_names(expr)
        assert names and names <= exported, f"{where}: {sorted(names - exported)} not exported"


def test_dashboard_shows_throughput_latency_batching_queue_and_errors() -> None:
    text = " ".join(dashboard_exprs().values())
    for what, metric in WANTED.items():
        assert metric in text, f"no panel for {what}"


def test_panels_use_the_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in panels(dashboard["panels"]):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    ids = [panel["id"] for panel in panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_provisioning_points_at_the_dashboards() -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/electric.yml").read_text())
    (entry,) = provider["providers"]
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    mounts = dict(volume.rsplit(":", 1)[0].split(":", 1)
                  for volume in compose["services"]["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] == entry["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    datasource = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasource["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
