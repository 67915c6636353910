# Two commands on a fresh machine: `make demo` and `make test`. Each sets up what it needs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# DDS stays on this machine, in a domain of this run's own (see ../shared/ROS2-WHEELS.md).
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export ROS_DOMAIN_ID ?= $(shell echo $$(( $$$$ % 90 + 10 )))
export PYTHONUNBUFFERED := 1

.PHONY: setup test demo bench clean
setup:
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: setup
	$(PY) -m cascade_sd_ros.tools.cli demo $(DEMO_ARGS)

bench: setup
	$(PY) bench/events.py
	$(PY) bench/spec.py --quick

clean:
	rm -rf build $(VENV)
