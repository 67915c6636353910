# Two commands on a fresh machine: `make demo` and `make test`. Each sets up what it needs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# DDS stays on this machine, in a domain of this run's own (see ../shared/ROS2-WHEELS.md): the
# tests claim one per pytest process themselves (test/conftest.py); demo and bench run under the
# same lock-file claim, held while they run, so parallel runs never share a domain.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
IN_OWN_DOMAIN := $(PY) test/helpers/dds_domain.py run --
export PYTHONUNBUFFERED := 1

.PHONY: setup test lint typecheck demo bench clean
setup:
	@bash scripts/setup.sh

test: setup lint typecheck
	$(PY) -m pytest -q $(PYTEST_ARGS)

# lint settings in pyproject.toml; part of `make test`, so of CI
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy over core/ (files, strictness and the modules without stubs in pyproject.toml); part of
# `make test`, so of CI
typecheck: setup
	$(PY) -m mypy

demo: setup
	$(IN_OWN_DOMAIN) $(PY) -m cascade_sd_ros.tools.cli demo $(DEMO_ARGS)

bench: setup
	$(IN_OWN_DOMAIN) $(PY) bench/events.py
	$(IN_OWN_DOMAIN) $(PY) bench/spec.py --quick

clean:
	rm -rf build $(VENV)
