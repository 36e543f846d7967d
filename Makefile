# GPU Inference Lab. `make report` and `make test` do everything on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
DEVICE ?= auto
SIZE ?= small
# this machine's pip config names local indexes that lack most packages; pip warns for each one
QUIET_PIP := 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

.PHONY: setup test report lab gpu-check gpu-wheels gpu-wheels-dry-run clean

setup: $(STAMP)

# Re-runs only when pyproject.toml changes. torch==2.13.0 is the CPU build on our machines; it is
# installed only when the venv has no torch, so a CUDA build a user put there is kept.
$(STAMP): pyproject.toml lab/overrides.json
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0 $(QUIET_PIP)
	$(PY) -m pip install --quiet -e '.[dev]' $(QUIET_PIP)
	@mkdir -p $(VENV)/share/jupyter/lab/settings && cp lab/overrides.json $(VENV)/share/jupyter/lab/settings/
	@touch $@

# Lessons run under papermill with their parameters (tests/test_report.py); solutions run in a
# kernel in tests/grading (every check() must pass); the generated exercises run through nbval.
test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest tests exercises --nbval-lax

report: setup
	$(VENV)/bin/labkit report --device $(DEVICE) --size $(SIZE)

# Rooted at the project, so that lessons and exercises are both in reach; opens on START.md, shown
# rendered (lab/overrides.json, installed into the venv by setup).
lab: setup
	$(PY) -m jupyter lab --ServerApp.root_dir=$(CURDIR) START.md

# For a machine with a GPU and its own python3 + torch (the lent GPU image has no network): no
# venv, the checkout on PYTHONPATH; the report's Jupyter packages come from .whl/ (gpu-wheels).
gpu-check:
	PYTHONPATH=$(CURDIR) python3 bench/gpu_check.py $(ARGS)

# On a machine with network, before carrying the checkout to the GPU one (see bench/gpu_wheels.py).
gpu-wheels: setup
	$(PY) bench/gpu_wheels.py $(QUIET_PIP)

# The same wheelhouse, for this python, checked in a fresh environment without network access to
# anything but it: lesson 00 through labkit report (a few minutes).
gpu-wheels-dry-run: setup
	$(PY) bench/gpu_wheels.py --dry-run $(QUIET_PIP)

clean:
	rm -rf $(VENV) reports .pytest_cache
