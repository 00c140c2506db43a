# cpm_lightning: `make help` lists the targets.
# TORCH_SPEC picks the torch build: the default (plain torch) is the CUDA build on Linux, which
# GPU users want; CPU-only machines save GBs with `make train TORCH_SPEC=torch==2.13.0`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch
PY := $(VENV)/bin/python
DATA_DIR ?= data
SYNTHETIC := $(DATA_DIR)/synthetic/train.h5
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv data train test test-fast lint format bench reproduce clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed  ## create the virtual environment (.venv) and install the project

$(SYNTHETIC): | $(VENV)/.installed
	$(PY) -m data_prep synthetic --out $(DATA_DIR)/synthetic

data: $(SYNTHETIC)  ## make the embedded synthetic pose set (data/synthetic/*.h5)

train: $(VENV)/.installed $(SYNTHETIC)  ## train the default (synthetic) run and print per-stage PCK
	$(PY) -m cpm_lightning.train $(ARGS)

test: $(VENV)/.installed  ## run the whole test suite (slow tests included)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(VENV)/.installed  ## run the tests not marked slow
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(VENV)/.installed  ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed  ## ruff format and autofix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(VENV)/.installed  ## run the benchmarks: benchmarks/results/*.json and the README table
	$(PY) benchmarks/run_all.py $(ARGS)

reproduce: $(VENV)/.installed $(SYNTHETIC)  ## the paper's Figs 4, 5, 6b, 6c on the synthetic set -> REPORT.md (MODE=quick|full)
	$(PY) -m cpm_lightning.reproduce --mode $(or $(MODE),quick)

clean:  ## remove outputs (keeps data/ and .venv/)
	rm -rf outputs multirun test-artifacts .pytest_cache
