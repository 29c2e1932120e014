"""PromQL as the deploy files write it, checked by real parsers.

Grafana and the Prometheus adapter write templates, not PromQL: their variables are filled in
first. Syntax is then judged by Prometheus' own parser (``promtool check rules`` on a generated
rule file, one recording rule per expression); the metric names come from a syntax tree
(PyPI ``promql-parser``), never from a regular expression over the text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from deploy_tools import DEPLOY, run_tool
from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = DEPLOY / "grafana/dashboards/electric.json"

# Grafana's interval variables stand for durations; every other variable in these files is a
# label value inside a regex matcher (=~"$job"), where ".*" is what "All" means.
_GRAFANA_DURATIONS = {"__rate_interval", "__interval", "__range"}
_GRAFANA_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_LABEL_VALUES = re.compile(r"^label_values\((.+),\s*\w+\)$")

# What each metric type puts on the wire (prometheus_client, OpenMetrics-style _created too).
_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count",
                                                                "_created"),
             "summary": ("", "_sum", "_count", "_created"), "gauge": ("",), "info": ("_info",)}


def fill_grafana(expr: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return "1m" if name in _GRAFANA_DURATIONS else ".*"

    return _GRAFANA_VARIABLE.sub(value, expr)


def panels(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    out = []
    for panel in items:
        out.append(panel)
        out.extend(panels(panel.get("panels", [])))
    return out


def dashboard_exprs() -> dict[str, str]:
    """Each PromQL expression of the dashboard, keyed by where it is, variables filled in."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = {}
    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            exprs[f"panel {panel['title']!r} {target['refId']}"] = fill_grafana(target["expr"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = _LABEL_VALUES.match(variable["query"]["query"])
            assert match, f"variable {variable['name']}: expected label_values(selector, label)"
            exprs[f"variable {variable['name']}"] = fill_grafana(match.group(1))
    return exprs


def fill_adapter(query: str, series: str, label_matchers: str, group_by: str) -> str:
    """A prometheus-adapter metricsQuery with its Go-template fields filled in."""
    return (query.replace("<<.Series>>", series).replace("<<.LabelMatchers>>", label_matchers)
            .replace("<<.GroupBy>>", group_by))


def check_parses(promtool: str, exprs: dict[str, str], tmp_path: Path) -> None:
    """Fail unless Prometheus' parser accepts every expression; ``exprs`` maps where -> expr."""
    names = list(exprs)
    rules = [{"record": f"check:expr_{i}", "expr": exprs[name]} for i, name in enumerate(names)]
    path = tmp_path / "expressions.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}))
    index = "".join(f"\n  expr_{i}: {name}" for i, name in enumerate(names))
    run_tool(promtool, "check", "rules", str(path), explain=f"\nwhere expr_N comes from:{index}")


def metric_names(expr: str) -> set[str]:
    """Every metric a PromQL expression selects, read off its syntax tree."""
    import promql_parser

    names: set[str] = set()
    unnamed: list[str] = []

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            else:
                unnamed.append(str(node))

    promql_parser.walk(promql_parser.parse(expr), visit, None)
    assert not unnamed, f"selectors without a metric name in {expr!r}: {unnamed}"
    return names


def sample_names(exposition: str) -> set[str]:
    """Sample names a /metrics text exposes, including those of label sets not yet observed.

    A labelled family with no observation yet shows only its HELP and TYPE lines, so the
    names come from the declared types as well as from the samples present.
    """
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def service_sample_names() -> set[str]:
    """What the service's /metrics exposes: the same registry code a running process renders."""
    from service.metrics import Metrics

    return sample_names(Metrics().render().decode())
