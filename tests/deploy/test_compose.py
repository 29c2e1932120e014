"""deploy/docker-compose.yml, read as data (Docker Compose itself is not installable here).

It must build a target the Dockerfile has, mount files that exist where Prometheus and Grafana
look for them, point Prometheus at the service's port, and set only real ELECTRIC_ settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from deploy_tools import DEPLOY, ROOT
from test_dockerfile import stages

from service.settings import Settings

COMPOSE = DEPLOY / "docker-compose.yml"


def services() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text())["services"])


def mounts(service: dict[str, Any]) -> dict[Path, str]:
    """Host path (resolved against the compose file's folder) -> container path."""
    out = {}
    for volume in service["volumes"]:
        host, container = volume.split(":")[:2]
        out[(DEPLOY / host).resolve()] = container
    return out


def test_builds_the_cpu_target_from_the_repository() -> None:
    build = services()["electric"]["build"]
    assert (DEPLOY / build["context"]).resolve() == ROOT
    assert build["target"] in stages()


def test_prometheus_gets_its_config_and_rules() -> None:
    prometheus = services()["prometheus"]
    mounted = mounts(prometheus)
    assert all(path.exists() for path in mounted)
    config_path = next(arg.split("=", 1)[1] for arg in prometheus["command"]
                       if arg.startswith("--config.file="))
    config_file = next(host for host, inside in mounted.items() if inside == config_path)
    config = yaml.safe_load(config_file.read_text())
    folder = str(Path(config_path).parent)
    for rule_file in config["rule_files"]:
        assert f"{folder}/{rule_file}" in mounted.values()
    (target,) = config["scrape_configs"][0]["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in services()
    assert f"{port}:{port}" in services()[host]["ports"]


def test_grafana_mounts_exist() -> None:
    assert all(path.exists() for path in mounts(services()["grafana"]))


def test_service_settings_and_shutdown() -> None:
    electric = services()["electric"]
    fields = {k.removeprefix("ELECTRIC_").lower(): v for k, v in electric["environment"].items()}
    settings = Settings(**fields)
    assert electric["read_only"] is True and "/tmp" in electric["tmpfs"]
    assert int(electric["stop_grace_period"].removesuffix("s")) > settings.drain_timeout_s
