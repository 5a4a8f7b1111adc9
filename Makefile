# Two entry points that work on a fresh machine: `make demo` and `make test`
# (which installs and starts what the tests need: see `browser` and `services`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint services browser bench soak sync-storm clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m examples.demo.run_demo

# Two pytest processes, a test file each at a time (the tests of one file share
# what the file sets up): most tests wait on a database, a broker or a child
# process, so two at once on two cores take about half as long as one.
test: $(STAMP) lint browser services
	$(BIN)/pytest -n 2 --dist loadfile

# The servers the tests talk to (PostgreSQL, MariaDB, Redis, RabbitMQ, NATS,
# Mosquitto): started if they are down, a loud failure if one stays down.
services:
	.ci/services

# The browser tests drive Debian's chromium through Playwright (pointed at
# /usr/bin/chromium, so Playwright downloads no browser of its own); the docs'
# commands (tests/docs) pipe the JSON API through jq. Each is installed from
# Debian's packages when it is missing, with sudo when not root.
CHROMIUM := /usr/bin/chromium
JQ := /usr/bin/jq
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
APT_GET = $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get

browser: $(CHROMIUM) $(JQ)

$(CHROMIUM):
	@echo "installing chromium for the browser tests" >&2
	$(APT_GET) update -qq
	$(APT_GET) install -y -qq chromium >/dev/null

$(JQ):
	@echo "installing jq for the docs' commands" >&2
	$(APT_GET) update -qq
	$(APT_GET) install -y -qq jq >/dev/null

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

# The crash storms, longer and on both stores, until 1,000 SIGKILLs (about 20 min;
# tests/crash/soak.py). Not part of `make test`. SOAK_ARGS: e.g. --kills 2000.
SOAK_ARGS ?=

soak: $(STAMP)
	$(BIN)/python -m tests.crash.soak $(SOAK_ARGS)

# The mutation check of docs/guarantees.md: each mutation breaks the code behind a
# promise in a copy of src/ and must make one of that promise's tests fail (about
# 5 to 8 min; tests/mutants/). Not part of `make test`. MUTANTS_ARGS: e.g. --only SKIP.
MUTANTS_ARGS ?=

.PHONY: mutants
mutants: $(STAMP)
	$(BIN)/python -m tests.mutants $(MUTANTS_ARGS)

# The full sync storm: 200 files of which 10 are 50-300 MB (sparse), 30 s of
# growth, ten SIGKILLs (tests/crash/test_sync_storm.py); the suite runs a
# bounded tree. Not part of `make test`.
sync-storm: $(STAMP)
	FERRYMAN_STORM_SYNC_BIG=10 FERRYMAN_STORM_SYNC_BIG_MAX_MB=300 \
	FERRYMAN_STORM_SYNC_GROW_SECONDS=30 FERRYMAN_STORM_SYNC_TIMEOUT=1800 \
	$(BIN)/pytest tests/crash/test_sync_storm.py -q -p no:randomly

# The broker crash storms at full size: per broker (RabbitMQ, Redis Streams, NATS
# JetStream, SQS), 10,000 messages published, then `ferryman run` SIGKILLed 50
# times (tests/brokers/test_storms.py; the suite runs 500 messages, 5 kills, SQS
# on moto's server). SQS runs here on fauxqs (tests/brokers/sqs_server.py): moto
# scans its whole queue on every call, so 10,000 would take hours to drain.
# About 20 min on a shared machine. Not part of `make test`; `make soak` runs them too.
.PHONY: storms-brokers
storms-brokers: $(STAMP) services $(FAUXQS)
	FERRYMAN_STORM_BROKER_MESSAGES=10000 FERRYMAN_STORM_BROKER_KILLS=50 \
	FERRYMAN_STORM_SQS_SERVER=fauxqs \
	    $(BIN)/pytest tests/brokers/test_storms.py -o timeout=3600 -p no:logging -s

# fauxqs, an SQS emulator from the npm registry whose calls cost the same at any
# queue length, for the full-size SQS storm and bench/brokers.py --sqs fauxqs.
# 1.9.2: the last release that runs on Node.js 20. Needs node and npm.
FAUXQS := .fauxqs/node_modules/fauxqs/dist/cli.js
$(FAUXQS):
	npm install --prefix .fauxqs --no-audit --no-fund --no-save fauxqs@1.9.2
	test -f $(FAUXQS)

.PHONY: fauxqs
fauxqs: $(FAUXQS)

# The queue's limits at full size (tests/crash/test_queue_storm.py): three
# processes share a rate limit for 30 s; four workers run 2,000 runs over 20
# keys while 100 SIGKILLs strike. The suite runs 5 s and 300 runs / 10 kills.
# About 5 min. Not part of `make test`; `make soak` runs the storm too.
.PHONY: queue-limits
queue-limits: $(STAMP)
	FERRYMAN_STORM_RATE_SECONDS=30 FERRYMAN_STORM_QUEUE_RUNS=2000 FERRYMAN_STORM_QUEUE_KILLS=100 \
	    $(BIN)/pytest tests/crash/test_queue_storm.py -q -p no:randomly -o timeout=1800

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
