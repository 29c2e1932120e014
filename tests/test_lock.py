"""The lock (requirements/*.txt) agrees with pyproject.toml, offline.

`make lock` writes the lock from pyproject.toml; these checks catch a pyproject.toml edit that was
not re-locked, a hand-edited lock, and a lock that would pull the wrong torch or ONNX Runtime.
They read files only: no network, no resolver.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements"

# Each lock and the pyproject.toml extras and input files it is compiled from: the same table as
# the Makefile's `lock` target. None: not the project's dependencies at all (build.txt is the
# pip, setuptools and wheel that a new venv starts with).
SETS: dict[str, tuple[tuple[str, ...] | None, tuple[str, ...]]] = {
    "serve": (("cpu",), ("build.in",)),
    "test": (("cpu", "export", "dev", "bulk"), ("build.in",)),
    "export": (("cpu", "export"), ("build.in",)),
    "gpu": (("gpu",), ("build.in", "gpu.in")),
    "build": (None, ("build.in",)),
}
# The machine the test and export locks target (they pin a cp311 x86_64 Linux torch file).
LINUX_311 = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux",
             "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
             "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def lock_entries(name: str) -> dict[str, tuple[Version, str | None, list[str]]]:
    """{canonical name: (version, marker, hashes)} of requirements/<name>.txt."""
    text = re.sub(r"\\\n", " ", (REQUIREMENTS / f"{name}.txt").read_text())
    out: dict[str, tuple[Version, str | None, list[str]]] = {}
    for line in text.splitlines():
        line = line.split(" #")[0].strip()
        if not line or line.startswith(("#", "--")):
            continue
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", line)
        req = Requirement(re.sub(r"\s--hash=\S+", "", line).strip())
        pins = [spec for spec in req.specifier if spec.operator == "=="]
        assert len(pins) == 1 and len(req.specifier) == 1, f"{name}.txt: {line!r} is not a pin"
        out[canonicalize_name(req.name)] = (Version(pins[0].version), str(req.marker or "") or None,
                                            hashes)
    return out


def inputs(name: str) -> list[Requirement]:
    """The top-level requirements a lock is compiled from."""
    extras, files = SETS[name]
    project = pyproject()["project"]
    lines = [] if extras is None else list(project["dependencies"])
    for extra in extras or ():
        lines += project["optional-dependencies"][extra]
    for file in files:
        lines += [line for line in (REQUIREMENTS / file).read_text().splitlines()
                  if line.strip() and not line.startswith("#")]
    return [Requirement(line) for line in lines]


@pytest.mark.parametrize("name", sorted(SETS))
def test_every_pin_is_hashed(name: str) -> None:
    entries = lock_entries(name)
    assert entries, f"requirements/{name}.txt pins nothing"
    unhashed = [pkg for pkg, (_, _, hashes) in entries.items() if not hashes]
    assert not unhashed, f"requirements/{name}.txt: no --hash for {unhashed}"


@pytest.mark.parametrize("name", sorted(SETS))
def test_every_top_level_requirement_is_pinned_within_its_range(name: str) -> None:
    entries = lock_entries(name)
    for req in inputs(name):
        key = canonicalize_name(req.name)
        assert key in entries, (
            f"{req} (pyproject.toml or requirements/*.in) is not in requirements/{name}.txt: "
            "run `make lock`")
        version = entries[key][0]
        assert req.specifier.contains(version, prereleases=True), (
            f"requirements/{name}.txt pins {req.name}=={version}, outside {req}: run `make lock`")


def test_a_package_has_one_version_in_every_lock() -> None:
    seen: dict[str, tuple[Version, str]] = {}
    for name in sorted(SETS):
        for pkg, (version, _, _) in lock_entries(name).items():
            first = seen.setdefault(pkg, (version, name))
            assert first[0] == version, (
                f"{pkg}: {first[0]} in {first[1]}.txt, {version} in {name}.txt: run `make lock`")


@pytest.mark.parametrize("name", ["serve", "export", "build"])
def test_the_test_lock_installs_everything_that_serving_and_export_install(name: str) -> None:
    """`make test`'s venv stands for `make serve`'s too (the Makefile touches both stamps)."""
    test = lock_entries("test")
    needed = {pkg for pkg, (_, marker, _) in lock_entries(name).items()
              if marker is None or Marker(marker).evaluate(LINUX_311)}
    assert needed <= set(test), f"in {name}.txt, not in test.txt: {sorted(needed - set(test))}"


@pytest.mark.parametrize("name", sorted(SETS))
def test_no_lock_says_where_to_download_from(name: str) -> None:
    """Where pip finds a file (a wheel folder, PyTorch's CPU index) is the installing machine's
    configuration (README "Dependencies"), never a line of the lock: a --find-links or
    --index-url there would carry one machine's path to every other."""
    options = [line for line in (REQUIREMENTS / f"{name}.txt").read_text().splitlines()
               if line.startswith("-") and not line.startswith(("-r", "-c"))]
    assert not options, f"requirements/{name}.txt carries {options}: drop them"


def test_torch_is_the_cpu_build_and_only_where_export_needs_it() -> None:
    for name in ("test", "export"):
        version = lock_entries(name)["torch"][0]
        # A plain 2.13.0 would be PyPI's CUDA build, several GB of nvidia-* packages.
        assert version.local == "cpu", f"{name}.txt pins torch=={version}, not the CPU build"
        assert not any(pkg.startswith("nvidia-") for pkg in lock_entries(name)), name
    for name in ("serve", "gpu", "build"):
        assert "torch" not in lock_entries(name), f"{name}.txt must not install torch"


def test_each_lock_has_exactly_one_onnx_runtime() -> None:
    """onnxruntime and onnxruntime-gpu install into the same package and cannot share a venv."""
    expected = {"gpu": {"onnxruntime-gpu"}, "build": set()}
    for name in sorted(SETS):
        runtimes = {"onnxruntime", "onnxruntime-gpu"} & set(lock_entries(name))
        assert runtimes == expected.get(name, {"onnxruntime"}), name


def test_the_lock_pins_the_projects_build_backend() -> None:
    """The project installs with --no-build-isolation from the lock's setuptools and wheel."""
    build = {canonicalize_name(Requirement(line).name): Requirement(line)
             for line in pyproject()["build-system"]["requires"]}
    locked = {canonicalize_name(req.name): req for req in inputs("serve")
              if canonicalize_name(req.name) in build}
    assert {k: str(v) for k, v in locked.items()} == {k: str(v) for k, v in build.items()}, (
        "requirements/build.in must list pyproject.toml's [build-system] requires as they are")
