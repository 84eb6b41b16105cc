# mainloop: `make dev` runs it (`make dev DEMO=1` on fakes, no accounts), `make test` tests it.
# Both install what is missing first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# The Temporal CLI lands in Go's bin directory; make it findable.
export PATH := $(PATH):$(shell go env GOPATH 2>/dev/null || echo $(HOME)/go)/bin:$(HOME)/go/bin
CARGO ?= cargo

.PHONY: help setup dev web web-types web-check deploy-check e2e test test-faults test-faults-short test-api-fuzz lint fmt bench histories determinism-gate clean

NPM ?= npm
FRONTEND := frontend
# npm ci from the committed lock file, again whenever the lock file changes.
NODE_MODULES := $(FRONTEND)/node_modules/.installed
E2E_MODULES := e2e/node_modules/.installed
# The deployment checker: its own Go module, whose pinned dependencies come from the Go
# module proxy on first use.
DEPLOY_CHECK := scripts/deploy-check

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: ## Install what is missing (Temporal CLI, PostgreSQL for tests)
	@scripts/setup

dev: setup web ## Run mainloop: Temporal dev server + worker + API + web app + SQLite, on http://127.0.0.1:8080 (DEMO=1: on fakes, no accounts)
	$(CARGO) build -p mainloop-agent
	MAINLOOP_CLAUDE_BIN="$${MAINLOOP_CLAUDE_BIN:-$(CURDIR)/.tools/claude-code/node_modules/.bin/claude}" \
		$(CARGO) run --bin mainloop -- dev $(if $(filter 1 true yes,$(DEMO)),--demo)

$(NODE_MODULES): $(FRONTEND)/package-lock.json $(FRONTEND)/package.json
	cd $(FRONTEND) && $(NPM) ci --no-audit --no-fund
	touch $@

web: $(NODE_MODULES) ## Build the web app into frontend/build (release binaries embed it)
	cd $(FRONTEND) && $(NPM) run build

web-types: $(NODE_MODULES) ## Regenerate the web app's TypeScript types from the API's OpenAPI document
	scripts/web-types

web-check: $(NODE_MODULES) ## The web app's checks: types, unit tests, build, generated types up to date
	cd $(FRONTEND) && $(NPM) run check
	cd $(FRONTEND) && $(NPM) test
	cd $(FRONTEND) && $(NPM) run build
	scripts/web-types --check

deploy-check: ## Check k8s/, temporal/, docker-compose.yml and the Dockerfiles (no cluster or Docker needed)
	@command -v go >/dev/null 2>&1 || { echo "deploy-check needs Go 1.25+ (https://go.dev/dl)" >&2; exit 1; }
	cd $(DEPLOY_CHECK) && go vet ./... && go test ./... && go run . --repo $(CURDIR)

$(E2E_MODULES): e2e/package-lock.json e2e/package.json
	cd e2e && $(NPM) ci --no-audit --no-fund
	touch $@

e2e: setup web $(E2E_MODULES) ## The web app end to end in Chromium, against mainloop dev --demo
	@scripts/setup --browser
	$(CARGO) build -p mainloop -p mainloop-agent
	cd e2e && $(NPM) test

test-api-fuzz: setup ## Fuzz the API against its OpenAPI document (schemathesis, every check) on mainloop dev --demo
	@scripts/setup --fuzz
	$(CARGO) build -p mainloop -p mainloop-agent
	scripts/api-fuzz

test: setup ## Run every test (real Temporal, SQLite and PostgreSQL, the web app's, end to end)
	$(MAKE) web-check
	$(MAKE) deploy-check
	$(CARGO) test --workspace
	$(MAKE) test-faults-short
	$(MAKE) determinism-gate
	$(MAKE) e2e

# Where the fault suite leaves its figures (one JSON per test) and its Markdown report. Its
# tests run one at a time: each starts its own Temporal, PostgreSQL and mainloop, and the
# figures include timings.
FAULT_FIGURES ?= $(CURDIR)/target/fault-figures

test-faults: setup ## The fault suite (docs/reliability.md): repeated crashes and outages, counted, as a figures table
	$(CARGO) build -p mainloop-agent
	rm -rf $(FAULT_FIGURES)
	time MAINLOOP_FIGURES_DIR=$(FAULT_FIGURES) $(CARGO) test -p mainloop --test stack fault_suite -- --ignored --test-threads=1
	scripts/fault-report $(FAULT_FIGURES)

test-faults-short: setup ## The fault suite's shorter tests, scaled down (part of make test): racing idempotency keys, the API killed 5 times under a stream, PostgreSQL crashed 3 times
	$(CARGO) build -p mainloop-agent
	MAINLOOP_FIGURES_DIR=$(FAULT_FIGURES)/short MAINLOOP_FAULT_API_KILLS=5 MAINLOOP_FAULT_PG_RESTARTS=3 \
		$(CARGO) test -p mainloop --test stack -- --ignored --test-threads=1 \
		fault_suite::idempotency fault_suite::api_kills fault_suite::outages::postgres

lint: $(NODE_MODULES) ## Formatting, clippy and the web app's checks, as CI checks them
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@unformatted="$$(gofmt -l $(DEPLOY_CHECK))"; [ -z "$$unformatted" ] || { echo "gofmt needed: $$unformatted" >&2; exit 1; }
	cd $(FRONTEND) && $(NPM) run check
	cd $(FRONTEND) && $(NPM) run lint

fmt: $(NODE_MODULES) ## Format the code
	$(CARGO) fmt --all
	cd $(FRONTEND) && $(NPM) run format

bench: setup ## Benchmarks F1–F9 (DESIGN §12) against calibration probes: one table, target/bench/report.{md,json}
	$(CARGO) bench --bench suite

determinism-gate: ## Check that incompatible workflow changes fail to replay the corpus and patched() ones pass (docs/determinism.md)
	CARGO=$(CARGO) scripts/determinism-gate

histories: setup ## Re-record the replay corpus in workflows/tests/histories
	MAINLOOP_RECORD_HISTORIES=1 $(CARGO) test --test stack -- histories:: histories_paths::
	$(CARGO) test -p mainloop-workflows --test replay --test coverage

clean: ## Remove build output
	$(CARGO) clean
	rm -rf $(FRONTEND)/build $(FRONTEND)/.svelte-kit
