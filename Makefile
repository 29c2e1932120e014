# Two commands on a fresh machine: `make serve` and `make test`. Both create .venv as needed and
# install from the lock (requirements/*.txt, README "Dependencies"): pinned, hash-checked, nothing
# resolved at install time. `make lock` is the one command that resolves, on purpose.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The test and export locks pin the CPU build of torch (torch==2.13.0+cpu, by its hash), which is
# not on PyPI (PyPI's torch is a CUDA build). pip finds it through its own configuration: a folder
# holding the wheel in PIP_FIND_LINKS (or find-links in pip.conf), or PyTorch's CPU index in
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu. uv reads no pip configuration, so
# `make lock` hands it the same two variables; neither is written into a lock.
TORCH_SOURCE = $(foreach dir,$(PIP_FIND_LINKS),--find-links $(dir)) \
	$(if $(PIP_EXTRA_INDEX_URL),$(foreach url,$(PIP_EXTRA_INDEX_URL),--extra-index-url $(url)) \
		--index-strategy unsafe-best-match)
# Extra flags for `make lock`: LOCK_ARGS=--upgrade (every package to its newest allowed release)
# or LOCK_ARGS="--upgrade-package onnxruntime". Without them a re-lock keeps every pin that still
# satisfies pyproject.toml.
LOCK_ARGS ?=

.PHONY: serve test lint lock bench-service clean

# The venv's own pip is replaced first by the locked one (requirements/build.txt), which then
# installs everything else.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements/build.txt

# The lock pins pip, setuptools and wheel too, so the project installs with --no-build-isolation
# from what the lock put there; --no-deps: its dependencies came from the lock.
INSTALL_PROJECT := $(BIN)/pip install --quiet --no-deps --no-build-isolation -e .

# Serving install: onnxruntime (CPU) and the service, no torch.
$(VENV)/.serve-installed: requirements/serve.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --require-hashes -r requirements/serve.txt
	$(INSTALL_PROJECT)
	touch $@

# Everything the tests need: serving, the PyTorch export half, and the dev tools. test.txt holds
# serve.txt's versions (make lock constrains one by the other), so it stands for both.
$(VENV)/.dev-installed: requirements/test.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --require-hashes -r requirements/test.txt
	$(INSTALL_PROJECT)
	touch $@ $(VENV)/.serve-installed

serve: $(VENV)/.serve-installed
	$(BIN)/electric serve

# pytest exits 5 when it collects no tests; that is not a failure of the code.
test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check electric service model_export evaluation tests bench
	$(BIN)/mypy electric service model_export evaluation

# Re-compile every lock from pyproject.toml (build.txt: from build.in alone) with uv (pinned in the dev extra), then run the tests
# on the result. test.txt first; the others are constrained to its versions, so a package has one
# version in every lock. test and export pin one torch file (cp311, manylinux x86_64), so they
# target Python 3.11 on x86_64 Linux; serve and gpu (no torch) are universal (Python >= 3.11).
UV_COMPILE = $(BIN)/uv pip compile --quiet --generate-hashes --custom-compile-command "make lock" \
	$(LOCK_ARGS) pyproject.toml requirements/build.in
CPU_TORCH = --python-version 3.11 --python-platform x86_64-manylinux_2_28 $(TORCH_SOURCE)
PINNED = -c requirements/test.txt

ifneq ($(filter lock,$(MAKECMDGOALS)),)
ifeq ($(strip $(TORCH_SOURCE)),)
$(error make lock: uv cannot find torch's CPU build: set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu or PIP_FIND_LINKS=DIR)
endif
endif

lock: $(VENV)/.dev-installed
	$(UV_COMPILE) --extra cpu --extra export --extra dev --extra bulk $(CPU_TORCH) \
		-o requirements/test.txt
	$(UV_COMPILE) --extra cpu --extra export $(CPU_TORCH) $(PINNED) -o requirements/export.txt
	$(UV_COMPILE) --extra cpu --universal --python-version 3.11 $(PINNED) -o requirements/serve.txt
	$(UV_COMPILE) requirements/gpu.in --extra gpu --universal --python-version 3.11 $(PINNED) \
		-o requirements/gpu.txt
	$(BIN)/uv pip compile --quiet --generate-hashes --custom-compile-command "make lock" \
		$(LOCK_ARGS) requirements/build.in --universal --python-version 3.11 $(PINNED) \
		-o requirements/build.txt
	$(MAKE) test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
