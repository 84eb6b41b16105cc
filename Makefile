# mainloop: `make dev` runs it (`make dev DEMO=1` on fakes, no accounts), `make test` tests it.
# Both install what is missing first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# The Temporal CLI lands in Go's bin directory; make it findable.
export PATH := $(PATH):$(shell go env GOPATH 2>/dev/null || echo $(HOME)/go)/bin:$(HOME)/go/bin
CARGO ?= cargo

.PHONY: help setup dev test lint fmt bench histories clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: ## Install what is missing (Temporal CLI, PostgreSQL for tests)
	@scripts/setup

dev: setup ## Run mainloop: Temporal dev server + worker + API + SQLite, on http://127.0.0.1:8080 (DEMO=1: on fakes, no accounts)
	$(CARGO) build -p mainloop-agent
	MAINLOOP_CLAUDE_BIN="$${MAINLOOP_CLAUDE_BIN:-$(CURDIR)/.tools/claude-code/node_modules/.bin/claude}" \
		$(CARGO) run --bin mainloop -- dev $(if $(filter 1 true yes,$(DEMO)),--demo)

test: setup ## Run every test (real Temporal, SQLite and PostgreSQL)
	$(CARGO) test --workspace

lint: ## Formatting and clippy, as CI checks them
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

bench: setup ## Benchmarks (DESIGN §12), printed as a table with calibration ratios
	$(CARGO) bench --bench f1_chat

histories: setup ## Re-record the replay corpus in workflows/tests/histories
	MAINLOOP_RECORD_HISTORIES=1 $(CARGO) test --test stack -- histories::
	$(CARGO) test -p mainloop-workflows --test replay

clean: ## Remove build output
	$(CARGO) clean
