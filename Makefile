# One entry point for setting up, testing and trying perfusion-hub.
#   make demo   install everything, then run the main job on the bundled micro base
#   make test   install everything, then run the test suite
VENV ?= .venv
PYTHON ?= python3
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
DEMO_HOME ?= .phub/demo

.PHONY: setup test lint demo bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check perfusion_hub cli migrations tests benchmarks

demo: setup
	$(BIN)/phub --home $(DEMO_HOME) demo

bench: setup
	$(BIN)/python benchmarks/registry.py
	$(BIN)/python benchmarks/compose_overhead.py
	$(BIN)/python benchmarks/train_speed.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .phub
