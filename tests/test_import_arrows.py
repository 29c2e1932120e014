"""The import arrows README's "What is where" promises, read from the source.

Imports run one way: electric -> evaluation, bench -> model_export -> service. model_export
reaches service only through the artifact contract and the tokenizing and padding an export must
share with the service; nothing imports the CLI; the serving core imports neither the offline
toolkit beside it nor an HTTP library where it holds no HTTP code.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("electric", "service", "model_export", "evaluation", "bench")
# What each package may import from the others.
ALLOWED = {
    "electric": {"service", "model_export", "evaluation", "bench"},
    "evaluation": {"service", "model_export"},
    "bench": {"service", "model_export"},
    "model_export": {"service"},
    "service": set(),
}
MODEL_EXPORT_REACHES = ("service.artifact", "service.tokenization", "service.batch_policy")
# Beside the serving core, never imported by it.
OFFLINE = ("service.local", "service.scorer", "service.rerank", "service.commands")
# Serving-core modules with no HTTP in them: they must stay importable without an HTTP stack.
WITHOUT_HTTP = ("tokenization", "scoring", "batch_policy", "batcher", "errors", "engine",
                "model_host", "timing", "memory", "metrics", "settings", "artifact")


def imports() -> dict[str, set[str]]:
    """Module -> the project modules it imports (absolute imports, anywhere in the file)."""
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            names: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names.add(node.module)
            found[module] = {n for n in names if n.split(".")[0] in PACKAGES}
    return found


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_packages_import_only_downwards() -> None:
    wrong = [(m, n) for m, names in imports().items() for n in names
             if n.split(".")[0] != m.split(".")[0]
             and n.split(".")[0] not in ALLOWED[m.split(".")[0]]]
    assert not wrong


def test_nothing_imports_the_cli() -> None:
    assert not [(m, n) for m, names in imports().items() for n in names
                if within(n, ("electric",)) and not within(m, ("electric",))]


def test_model_export_reaches_service_only_through_the_artifact_side() -> None:
    wrong = [(m, n) for m, names in imports().items() if within(m, ("model_export",))
             for n in names if within(n, ("service",)) and not within(n, MODEL_EXPORT_REACHES)]
    assert not wrong


def test_the_serving_core_does_not_import_the_offline_toolkit() -> None:
    wrong = [(m, n) for m, names in imports().items()
             if within(m, ("service",)) and not within(m, OFFLINE)
             for n in names if within(n, OFFLINE)]
    assert not wrong


@pytest.mark.parametrize("module", WITHOUT_HTTP)
def test_core_module_loads_without_an_http_stack(module: str) -> None:
    # A fresh interpreter: this one has long imported fastapi for other tests.
    probe = (f"import sys, service.{module}; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & "
             "{'fastapi', 'starlette', 'uvicorn', 'httpx', 'torch'}))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "[]", f"service.{module} pulls in {out}"


def test_the_import_graph_has_no_circle() -> None:
    graph = imports()

    def module_of(name: str) -> str | None:
        """The project module an import names (``from a.b import c`` may name a.b.c)."""
        while name and name not in graph:
            name = name.rpartition(".")[0]
        return name or None

    edges = {m: {t for n in names if (t := module_of(n)) and t != m}
             for m, names in graph.items()}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            pytest.fail("import circle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in done:
            return
        for target in sorted(edges[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(edges):
        visit(module, [])
