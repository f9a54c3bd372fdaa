# AdStream — the commands a newcomer uses. `make run` and `make test` set everything up first.
SHELL := /bin/bash
PY    := .venv/bin/python
ADSTREAM := .venv/bin/adstream
KEEP_UP ?= 0

.DEFAULT_GOAL := help
.PHONY: help setup up down status run test bench bench-auction bench-billing bench-optimizer bench-streaming compare-runs lint format lock clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

setup: ## Install Python deps (.venv, pinned), JVM jars (Maven Central -> .local/jars) and the load generator (npm); idempotent
	@bash infra/setup.sh

up: setup ## Start every local service (Kafka, the shared store, MLflow, Airflow, ad manager, auction service, streaming job, calibrator, optimizer, dashboard); waits until healthy
	@$(ADSTREAM) up

down: ## Stop every local service (no-op when nothing runs)
	@if [ -x $(ADSTREAM) ]; then $(ADSTREAM) down; else echo "nothing to stop (no .venv)"; fi

status: ## Show each local service and its URL
	@$(ADSTREAM) status

run: setup ## Set up, start the platform and push data through it end to end (DURATION=3m RATE=20 USERS=500 BOT_SHARE=0.05 DAY_LENGTH=DURATION; KEEP_UP=1 leaves it running)
	@$(ADSTREAM) run $(if $(filter 1,$(KEEP_UP)),--keep-up) $(if $(DURATION),--duration $(DURATION)) $(if $(RATE),--rate $(RATE)) $(if $(USERS),--users $(USERS)) $(if $(BOT_SHARE),--bot-share $(BOT_SHARE)) $(if $(DAY_LENGTH),--day-length $(DAY_LENGTH))

test: setup ## Lint and run the whole test suite (starts and stops the Kafka broker it needs)
	@.venv/bin/ruff check .
	@.venv/bin/ruff format --check .
	@.venv/bin/lint-imports
	@$(PY) -m pytest

bench: setup ## Benchmarks; medians and ratios against a baseline go to reports/bench/ (REPEATS=3); the scorer also on make run's champion
	@$(ADSTREAM) bench ingestion --repeats $(or $(REPEATS),3)
	@$(ADSTREAM) bench scorer
	@$(ADSTREAM) bench bid-filter --repeats $(or $(REPEATS),3)
	@champion=$$(ls -t .local/models/ctr-model-v*.skops 2>/dev/null | head -1); \
	 if [ -n "$$champion" ]; then $(ADSTREAM) bench scorer --champion "$$champion" --output reports/bench/ctr_scorer_champion.json; \
	 else echo "no served champion in .local/models (make run leaves one): scorer timed on the families trained here only"; fi

bench-auction: setup ## Load-test the auction service (autocannon, 32 connections): auctions/s over an echo server's requests/s, 1 and REPLICAS replicas (REPEATS=3 DURATION=20 REPLICAS=2)
	@$(ADSTREAM) bench auction --repeats $(or $(REPEATS),3) --duration $(or $(DURATION),20) --replicas 1,$(or $(REPLICAS),2)

.PHONY: bench-bid-filter-mix
bench-bid-filter-mix: setup ## OpenRTB load with UNFILLABLE_SHARE unfillable requests: the service without and with a bid filter trained on that mix; reports/bench/bid_filter_mix.json (REPEATS=3 DURATION=20 UNFILLABLE_SHARE=0.6)
	@$(ADSTREAM) bench bid-filter-mix --repeats $(or $(REPEATS),3) --duration $(or $(DURATION),20) --unfillable-share $(or $(UNFILLABLE_SHARE),0.6)

bench-billing: setup ## Bill one hour of 1,000,000 events (local[2]) vs a DuckDB baseline; reports/bench/billing.json (REPEATS=3)
	@$(ADSTREAM) bench billing --repeats $(or $(REPEATS),3)

bench-optimizer: setup ## The optimizer's tick for 10,000 campaigns x 8 platforms on one core: p99 and RSS over DURATION; reports/bench/optimizer.json (DURATION=10m)
	@$(ADSTREAM) bench optimizer --duration $(or $(DURATION),10m)

bench-streaming: setup ## Kafka -> Delta streaming job (local[2]): throughput vs a raw-append baseline, latency p95, RSS soak; reports/bench/streaming.json (REPEATS=3 EVENTS=2000000 SOAK=30m)
	@$(ADSTREAM) bench streaming --repeats $(or $(REPEATS),3) --events $(or $(EVENTS),2000000) --soak $(or $(SOAK),30m)

compare-runs: setup ## Compare CTR training runs side by side (metrics, params, champion/challenger decision); LAST=N
	@$(ADSTREAM) compare --execute-notebook $(if $(LAST),--last $(LAST))

lint: setup ## ruff check + format check + the import rules (.importlinter)
	@.venv/bin/ruff check .
	@.venv/bin/ruff format --check .
	@.venv/bin/lint-imports

format: setup ## Apply ruff's fixes and formatting
	@.venv/bin/ruff check --fix .
	@.venv/bin/ruff format .

lock: setup ## Re-resolve requirements.lock from pyproject.toml's pins
	@.venv/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 --universal --quiet --no-header -o requirements.lock

clean: down ## Remove the local lake and service state (keeps .venv and the jar cache)
	rm -rf lake .local/kafka .local/mlflow .local/airflow .local/logs .local/run \
	  .local/campaigns.db .local/campaigns.db-wal .local/campaigns.db-shm .local/shared-store .local/models
