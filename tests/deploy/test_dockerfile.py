"""The Dockerfile: hadolint passes, every ignored rule says why, each target keeps its contract.

No Docker engine runs on the development and CI machines, so the image is never built here;
these checks read the file (hadolint parses it the way Docker does).
"""

from __future__ import annotations

import re

import pytest
import yaml
from deploy_tools import DEPLOY, ROOT, run_tool

from service.settings import Settings

DOCKERFILE = ROOT / "Dockerfile"
TARGETS = ("cpu", "gpu")


def stages() -> dict[str, list[str]]:
    """Instructions (continuation lines joined, comments dropped) of each named stage."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out: dict[str, list[str]] = {}
    current: list[str] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = out.setdefault(match.group(1), [])
        current.append(line)
    return out


def arg_defaults() -> dict[str, str]:
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)", DOCKERFILE.read_text(), re.MULTILINE))


def test_hadolint_passes(hadolint: str) -> None:
    run_tool(hadolint, "--no-color", str(DOCKERFILE))


def test_every_ignored_rule_says_why() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            above = lines[i - 1].strip() if i else ""
            assert above.startswith("#") and "hadolint" not in above and len(above.split()) > 4, (
                f"line {i + 1}: {line.strip()!r} needs a comment just above it saying why")


@pytest.mark.parametrize("target", TARGETS)
def test_target_runs_one_non_root_server_with_a_liveness_check(target: str) -> None:
    stage = stages()[target]
    users = [line.split()[1] for line in stage if line.startswith("USER ")]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0", (
        f"{target}: the last USER must be a numeric non-root UID (runAsNonRoot checks it)")
    health = [line for line in stage if line.startswith("HEALTHCHECK")]
    assert len(health) == 1 and "/healthz" in health[0]
    # Exec form: the server is PID 1 and gets SIGTERM itself, with no shell in between.
    assert 'ENTRYPOINT ["electric"]' in stage and 'CMD ["serve"]' in stage
    assert "STOPSIGNAL SIGTERM" in stage


@pytest.mark.parametrize("target", TARGETS)
def test_image_settings_are_real_settings(target: str) -> None:
    env = " ".join(line for line in stages()[target] if line.startswith("ENV "))
    electric = dict(re.findall(r"(ELECTRIC_\w+)=(\S+)", env))
    assert electric, f"{target}: no ELECTRIC_ settings in ENV"
    assert {k.removeprefix("ELECTRIC_").lower() for k in electric} <= set(Settings.model_fields)
    assert electric["ELECTRIC_HOST"] == "0.0.0.0", "a container must listen beyond loopback"


def test_uid_matches_the_pod_security_context() -> None:
    deployment = yaml.safe_load((DEPLOY / "k8s/base/deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    for target in TARGETS:
        user = [line.split()[1] for line in stages()[target] if line.startswith("USER ")][-1]
        assert user == f"{pod['runAsUser']}:{pod['runAsGroup']}", target


def test_build_context_lets_every_copied_path_through() -> None:
    """.dockerignore is an allow-list: each COPY source must be on it."""
    allowed = {line[1:].strip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    defaults = arg_defaults()
    for stage in stages().values():
        for line in stage:
            if not line.startswith("COPY ") or "--from=" in line:
                continue
            for source in line.split()[1:-1]:
                source = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], source)
                top = source.strip("./").split("/")[0]
                assert top in allowed and (ROOT / source).exists(), (
                    f"COPY {source}: not in the build context (.dockerignore) or missing")
