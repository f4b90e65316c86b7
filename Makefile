# Every command the README, CI and developers use. `make help` lists them.
.DEFAULT_GOAL := help
SHELL := /bin/bash

VENV ?= .venv
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed
BENCH_DEPS := $(VENV)/.bench-deps-installed
# Rebuild the extension when any Rust source or manifest changes.
RUST_SOURCES := $(shell find rust -name '*.rs' -o -name Cargo.toml) Cargo.toml pyproject.toml
EXTENSION := $(VENV)/.extension-built

.PHONY: help install build test test-rust test-python lint fmt bench demo clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(DEPS): requirements-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(DEPS) ## Create .venv with the build and test tools

$(EXTENSION): $(DEPS) $(RUST_SOURCES)
	$(VENV)/bin/maturin develop --release --quiet
	touch $@

build: $(EXTENSION) ## Build the Rust extension (release) into .venv

test: test-rust test-python ## Build everything and run every test

test-rust: ## Rust unit, integration and property tests
	cargo test --workspace

test-python: build ## Type checks (mypy, stubtest, README usage under --strict) and pytest
	$(PY) -m mypy python/flashcard_pipeline
	$(PY) -m mypy.stubtest flashcard_pipeline._native
	$(PY) -m mypy --strict tests/typing
	$(PY) -m pytest

lint: $(DEPS) ## rustfmt, clippy (warnings as errors) and ruff
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(VENV)/bin/ruff check --select F python tests benches examples

fmt: ## Format the Rust code
	cargo fmt --all

$(BENCH_DEPS): $(DEPS) requirements-bench.txt
	$(PY) -m pip install --quiet -r requirements-bench.txt
	touch $@

bench: build $(BENCH_DEPS) ## Side-by-side benchmarks: ours vs token-bucket and limits, and the Rust core
	$(PY) benches/side_by_side.py
	$(PY) benches/shim_vs_old.py
	$(PY) benches/pending_reservations.py
	$(PY) benches/keys.py
	$(PY) -m pytest benches --benchmark-enable --benchmark-only --benchmark-columns=min,mean,ops -q
	cargo bench -p ratelimit-core --bench check

demo: build ## A realistic run: simulated users against one budget, admitted rate per second
	$(PY) examples/demo.py

clean: ## Remove build output and the venv
	rm -rf target $(VENV) .pytest_cache .hypothesis .benchmarks
