# Two entry points that work on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m examples.demo.run_demo

test: $(STAMP) lint
	$(BIN)/pytest

# The property tests of tests/properties with 10 times the examples and longer
# state-machine runs (see tests/properties/profiles.py); they take a while.
.PHONY: properties
properties: $(STAMP)
	FERRYMAN_HYPOTHESIS_PROFILE=long $(BIN)/pytest tests/properties -o timeout=3600

lint: $(STAMP)
	$(BIN)/ruff check src tests examples bench
	$(BIN)/ruff format --check src tests examples bench
	$(BIN)/mypy

# Queue throughput next to Procrastinate, PgQueuer and DBOS (bench/README.md).
# The peers go into a venv of their own so the test venv stays lean.
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
BENCH_ARGS ?=

$(BENCH_STAMP): pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet -e '.[bench]' || { \
	    $(BENCH_VENV)/bin/pip install --quiet -e . && \
	    for req in $$($(BENCH_VENV)/bin/python -c 'import tomllib; \
	        print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["bench"])'); do \
	        $(BENCH_VENV)/bin/pip install --quiet "$$req" || echo "bench: could not install $$req"; \
	    done; }
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python bench/queue.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
