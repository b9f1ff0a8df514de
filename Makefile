# Every target creates (or reuses) .venv/, installs the package into it, then runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: venv test test-all mutate demo clean tpu-env tpu-aot

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# Fast suite: every capability at tiny size (aim <= 15 min on 2 cores; 14.3-19.5 min measured as the host's speed varies, 15.9-17.4 on 2026-12-02: docs/testing.md). Two pytest-xdist workers
# (TEST_WORKERS=0: one process): much of a test is single-threaded XLA compilation. Whole files
# go to one worker (their module fixtures are built once), slowest files first (tests/conftest.py).
TEST_WORKERS ?= 2
XDIST = -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(XDIST) $(PYTEST_ARGS) tests

# Everything, including the slow matrices.
test-all: $(STAMP)
	$(PY) -m pytest -q $(XDIST) $(PYTEST_ARGS) tests

# Mutation testing of the core math and the resume path (not part of `make test`; about an hour
# on 2 cores from scratch, minutes when rerun). Scope and tests: mutmut_config.py; scores: docs/testing.md.
MUTATE_ARGS ?=
mutate: $(STAMP)
	$(PY) -m pip install -q -e ".[dev,mutate]"
	$(PY) scripts/mutate.py $(MUTATE_ARGS)

demo: $(STAMP)
	DEMO_DIR=$(DEMO_DIR) bash scripts/demo.sh

# libtpu in its own venv (never the default install): compile for real TPU topologies from
# this host, ahead of time (benchmarks/tpu_aot.py and its slow test).
TPU_VENV := .venv-tpu
TPU_STAMP := $(TPU_VENV)/.installed
$(TPU_STAMP): setup.py
	test -x $(TPU_VENV)/bin/python || $(PYTHON) -m venv $(TPU_VENV)
	$(TPU_VENV)/bin/python -m pip install -q "jax[tpu]==$$($(PY) -c 'import jax; print(jax.__version__)')"
	$(TPU_VENV)/bin/python -m pip install -q -e .
	touch $(TPU_STAMP)

tpu-env: $(STAMP) $(TPU_STAMP)

TOPOLOGY ?= v5p:2x2x1
tpu-aot: tpu-env
	$(TPU_VENV)/bin/python benchmarks/tpu_aot.py --topology=$(TOPOLOGY)

clean:
	rm -rf $(VENV) $(TPU_VENV) *.egg-info
