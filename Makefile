# hrnet_mm: the two set-up commands are `make test` and `make demo`; both install the stack first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# pytest-xdist workers of make test/test-fast/test-core (0: one process). Two keep both cores of a 2-core machine
# busy: the end-to-end tests run their tools in single-threaded subprocesses.
PYTEST_JOBS ?= 2
# Tests go to the workers two at a time as they finish: xdist's default hands each worker a quarter of the suite at
# once, which gave one worker all the slow tests (tests/conftest.py puts them first on the workers).
XDIST := -n $(PYTEST_JOBS) --maxschedchunk=2

.PHONY: install test test-fast test-core lint demo demo-smoke env clean

install:  ## create .venv with the pinned stack (idempotent; fast when nothing changed)
	@bash tools/install_stack.sh

test: install  ## the whole test suite (lint included)
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: install  ## the suite without the slow end-to-end tests
	$(PY) -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

test-core: install  ## the architecture, kernels and deploy tests without the slow ones (6 min in one process)
	$(PY) -m pytest $(XDIST) -m "not slow" tests/models tests/ops tests/deploy $(PYTEST_ARGS)

lint: install
	$(PY) -m flake8 hrnet_mm hrnet_mm_runtime tools tests configs _hrnet_mm_config_hook.py setup.py
	$(PY) -m isort --check-only --diff hrnet_mm hrnet_mm_runtime tools tests configs _hrnet_mm_config_hook.py setup.py

TASK ?= all
demo: install  ## generate the demo data, train and evaluate one small model per task (TASK=det|seg|pose|cls)
	$(PY) -m hrnet_mm.cli.demo --task $(TASK) $(DEMO_ARGS)

demo-smoke: install  ## build an HRNet through each of the four task registries and run it once
	$(PY) -m hrnet_mm.cli.demo --smoke

env: install
	$(PY) -m hrnet_mm.cli.env

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
