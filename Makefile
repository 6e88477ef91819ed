# Entry points of the project. `make up` starts the whole stack on this machine (no Docker
# needed), `make test` runs every test against it. See docs/running.md.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
STACK := $(PYTHON) deploy/local/stack.py
BIN := .venv/bin
PYTEST_ARGS ?=
BENCH_ARGS ?=
FUZZ_ARGS ?=

.PHONY: help install up down status test lint bench drill fuzz clean

help:
	@echo "make up       start PostgreSQL, Kafka and the three services (installs what is missing)"
	@echo "make test     make up, then run the tests against the running stack"
	@echo "make status   one line per process;  make down: stop them all"
	@echo "make lint     ruff check, ruff format --check, mypy (and gofmt, go vet where Go is installed)"
	@echo "make bench    the benchmark, against the running stack"
	@echo "make drill    the fault drill: kill -9 every process in turn under load, check the books"
	@echo "make fuzz     schemathesis against the api's OpenAPI document, every check"
	@echo "make clean    make down, then remove .run/ (data, logs, jars, secrets)"
	@echo "More: $(STACK) --help"

install:
	$(STACK) install

up:
	$(STACK) up

down:
	$(STACK) down

status:
	$(STACK) status

# pytest's exit code 5 (no test collected) counts as a failure. The shared lock on
# tests.lock keeps another `make up` from restarting the services under a test run. Tests
# run with the simulated supplier off (the test of the supplier turns it on): stock arrives
# only when a test adds it; with short repair periods, so that tests of lost messages
# do not wait the production defaults (30 s); and with Prometheus scraping every 2 s, so that
# tests of alerts see a service go down within seconds.
test: export SUPPLIER_ENABLED ?= false
test: export PROMETHEUS_SCRAPE_INTERVAL ?= 2s
test: export API_NUDGE_AFTER_S ?= 5
test: export FULFILMENT_RETRY_AFTER_S ?= 3
test:
	$(STACK) up
	@settings="$$($(STACK) env)" || exit 1; \
	set -a; eval "$$settings"; set +a; \
	IO_STACK=1 flock --shared "$$IO_RUN_DIR/tests.lock" $(BIN)/pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no test" >&2; exit 1; fi; \
	exit $$rc

lint:
	$(STACK) venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mypy deploy/local/stack.py deploy/local/devstack
	@if command -v go >/dev/null; then \
		unformatted="$$(gofmt -l benchmarks/loadgen)"; \
		test -z "$$unformatted" || { echo "gofmt would change: $$unformatted"; exit 1; }; \
		cd benchmarks/loadgen && GOCACHE="$${GOCACHE:-$(CURDIR)/.run/go-cache}" go vet .; \
	fi

bench:
	$(STACK) up
	@settings="$$($(STACK) env)" || exit 1; \
	set -a; eval "$$settings"; set +a; \
	$(BIN)/python benchmarks/instant_orders.py $(BENCH_ARGS)

# The fault drill (tests/drill.py): orders with client-style retries while every process is
# killed -9 in turn, then again on two workers per service, then the books. Not in `make test`:
# it takes about eight minutes.
drill: export SUPPLIER_ENABLED ?= false
drill:
	$(STACK) up
	@settings="$$($(STACK) env)" || exit 1; \
	set -a; eval "$$settings"; set +a; \
	$(BIN)/python -m tests.drill $(DRILL_ARGS)

# The fuzzer (tests/fuzz.py): schemathesis against the api's /openapi.json with the demo
# credentials, every check. Not in `make test`; schemathesis gets its own virtualenv. It uses
# the stack as it runs (no `up`: that would restart services a running drill is killing).
fuzz:
	@settings="$$($(STACK) env)" || exit 1; \
	set -a; eval "$$settings"; set +a; \
	$(PYTHON) tests/fuzz.py $(FUZZ_ARGS)

clean:
	$(STACK) clean
