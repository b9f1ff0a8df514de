# Every target creates (or reuses) .venv/, installs the package into it, then runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: venv test test-all demo clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# Fast suite: every capability at tiny size (<= 15 min on 2 cores).
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS) tests

# Everything, including the slow matrices.
test-all: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

demo: $(STAMP)
	DEMO_DIR=$(DEMO_DIR) bash scripts/demo.sh

clean:
	rm -rf $(VENV) *.egg-info
